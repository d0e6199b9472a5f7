"""One transport (`clients.transport`) under the MURA client, the batch scorer and the wrist
client: each path is driven against real tritonservers through an outage and a failover, and
each must behave the same way.

- an outage within the budget: the server is killed, the request is sent while it is down, the
  server comes back (same ports) -> the answer arrives after failed attempts;
- an outage beyond the budget: the server is killed and stays down -> the same classified
  error (`server_unavailable`, "outage budget") from all three;
- a failover: `--url dead --url live` -> served by the live one after a failed attempt at the
  dead one;
- Ctrl-C in the caller of a synchronous client ends its call (the core runs on a private loop).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from clients.transport import RetryPolicy
from server.launcher import TritonServer, free_port
from tests.plugins.web import synthetic_radiograph

pytestmark = pytest.mark.timeout(900)

PATHS = ("mura", "batch", "wrist")
LONG = RetryPolicy(initial_s=0.1, max_s=1.0, give_up_after_s=600.0)
"""Longer than any restart of a tiny repository on a loaded machine: the outage must be
waited out."""
SHORT = RetryPolicy(initial_s=0.1, max_s=0.5, give_up_after_s=1.0)
"""An outage that outlasts it is given up on."""


@dataclass
class Outcome:
    """What a caller sees of one image, whichever client scored it."""

    ok: bool
    reason: str | None
    error: str | None


@dataclass
class PathUnderTest:
    """One client path, its codec hidden behind `score(path) -> Outcome`."""

    score: Callable[[Path], Outcome]
    report: Callable[[], dict[str, dict[str, int]]]
    close: Callable[[], None]


def _client(name: str, urls: list[str], retry: RetryPolicy) -> PathUnderTest:
    if name == "mura":
        from clients.mura import MuraClient

        mura = MuraClient(urls, retry=retry, timeout_s=60)

        def score_mura(path: Path) -> Outcome:
            result = mura.score_one(str(path), heatmap=False)
            return Outcome(result.ok, result.error_reason, result.error)

        return PathUnderTest(score_mura, mura.pool.report, mura.close)
    if name == "wrist":
        from clients.wrist import WristClient

        wrist = WristClient(urls, retry=retry, timeout_s=60)

        def score_wrist(path: Path) -> Outcome:
            (result,) = wrist.detect([str(path)])
            return Outcome(result.error is None, result.error_reason, result.error)

        return PathUnderTest(score_wrist, wrist.pool.report, wrist.close)
    from clients.batch import BatchScorer
    from clients.inputs import ScoreItem

    scorer = BatchScorer(urls, concurrency=1, retry=retry, request_timeout_s=60)
    asyncio.run(scorer.wait_ready(timeout_s=120))     # the contract, from the live endpoint

    def score_batch(path: Path) -> Outcome:
        rows: list[dict] = []
        summary = asyncio.run(scorer.run([ScoreItem(str(path))], None, on_row=rows.append))
        (row,) = rows
        assert summary.scored + summary.errors == 1     # one row, never lost or doubled
        return Outcome(row["error"] is None, row["error_reason"], row["error"])

    return PathUnderTest(score_batch, scorer.pool.report, lambda: None)


@pytest.fixture(scope="module")
def servers(tiny_repository: Path, wrist_repository: Path) -> Iterator[dict[str, TritonServer]]:
    """Servers of this module's own, killed and restarted by the tests (not the session's)."""
    with TritonServer(tiny_repository) as mura, TritonServer(wrist_repository) as wrist:
        yield {"mura": mura, "batch": mura, "wrist": wrist}


@pytest.fixture()
def images(tmp_path: Path, wrist_image) -> dict[str, Path]:
    root = tmp_path
    Image.fromarray(synthetic_radiograph(seed=11)).save(root / "elbow.png")
    Image.fromarray(wrist_image.image).save(root / "wrist.png")
    return {"mura": root / "elbow.png", "batch": root / "elbow.png", "wrist": root / "wrist.png"}


def _dead_url() -> str:
    """A loopback port nobody listens on: refused at once, like a dead replica."""
    return f"127.0.0.1:{free_port()}"


@pytest.mark.parametrize("path", PATHS)
def test_an_outage_within_the_budget_is_waited_out_beyond_it_is_one_classified_error(
        path: str, servers, images) -> None:
    server, image = servers[path], images[path]
    patient = _client(path, [server.grpc_url], LONG)
    impatient = _client(path, [server.grpc_url], SHORT)
    try:
        assert patient.score(image).ok and impatient.score(image).ok   # contracts, channels
        server.kill()
        # Beyond the budget: the server stays down for the whole call.
        gave_up = impatient.score(image)
        assert not gave_up.ok and gave_up.reason == "server_unavailable", gave_up
        assert "outage budget" in (gave_up.error or "")
        # Within the budget: sent while down, answered once the server is back.
        outcome: list[Outcome] = []
        caller = threading.Thread(target=lambda: outcome.append(patient.score(image)))
        caller.start()
        while not patient.report()[server.grpc_url]["failed_attempts"] and caller.is_alive():
            caller.join(timeout=0.05)
        server.start()                                  # same ports; blocks until ready
        caller.join(timeout=600)
        assert outcome and outcome[0].ok, outcome
        report = patient.report()[server.grpc_url]
        assert report["failed_attempts"] >= 1 and report["ok"] >= 2, report
    finally:
        patient.close()
        impatient.close()
        server.start()                                  # for the next test, whatever happened


@pytest.mark.parametrize("path", PATHS)
def test_a_dead_first_url_fails_over_to_the_live_one(path: str, servers, images) -> None:
    dead, live = _dead_url(), servers[path].grpc_url
    client = _client(path, [dead, live], SHORT)
    try:
        outcome = client.score(images[path])
        report = client.report()
    finally:
        client.close()
    assert outcome.ok, outcome
    assert report[dead]["ok"] == 0 and report[dead]["failed_attempts"] >= 1, report
    assert report[live]["ok"] >= 1 and report[live]["failed_attempts"] == 0, report


_INTERRUPTED = r'''
import sys
import numpy as np
from clients.transport import RetryPolicy
if sys.argv[1] == "mura":
    from clients.mura import MuraClient as Client
    call = lambda c, img: c.score([img] * 4)
else:
    from clients.wrist import WristClient as Client
    call = lambda c, img: c.detect([img] * 4)
client = Client(sys.argv[2], retry=RetryPolicy(give_up_after_s=3600))
image = np.full((300, 300), 100, np.uint8)
try:
    print("waiting out the outage", flush=True)
    call(client, image)
except KeyboardInterrupt:
    client.close()
    print("interrupted and closed", flush=True)
    sys.exit(130)
'''


@pytest.mark.parametrize("path", ("mura", "wrist"))
def test_ctrl_c_ends_a_synchronous_client_call_during_an_outage(path: str) -> None:
    """The synchronous clients wait on the core's private loop: SIGINT in the caller cancels
    the requests there and returns, instead of waiting out the hour-long outage budget (the
    only endpoint is dead)."""
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _INTERRUPTED, path, _dead_url()],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1],
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "waiting out the outage"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)     # a hang guard: the budget is an hour
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted and closed" in out
