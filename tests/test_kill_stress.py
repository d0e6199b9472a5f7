"""Clients SIGKILLed mid-request must never take the service down (bounded, loopback only).

tritonserver 2.51 segfaults in `TRITONBACKEND_ResponseSend` when clients are killed mid-request
(Triton's request-cancellation bugs of that era: server issues #8034, #7368). Rounds of exactly
this test's shape, run against a bare tritonserver, crashed it in 3 of 4 runs here. `msk serve`
therefore puts its gRPC guard (server/grpc_guard.py) in front, which never passes a client's
cancellation on. This keeps those rounds in every CI run, with and without system shared memory,
against `msk serve` as users run it: the same tritonserver process must still be there, and a
fresh client must be served.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.msk_process import MskProcess, run_msk
from tests.plugins.msk_serve import ServeProcess, running_msk_serve

ROUNDS_PER_MODE = 6


@pytest.fixture(scope="module")
def stress_server(tiny_repository: Path):
    with running_msk_serve("serve", "--repository", str(tiny_repository),
                           "--allow-client-shm") as serve:      # the shm rounds need it
        yield serve


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stress") / "images"
    folder.mkdir()
    rng = np.random.default_rng(7)
    for i in range(48):
        h, w = rng.integers(200, 480, 2)
        Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("shared_memory", [False, True], ids=["grpc", "shm"])
def test_clients_killed_mid_request_leave_the_server_up(stress_server: ServeProcess,
                                                         images: Path, shared_memory: bool
                                                         ) -> None:
    extra = ["--shared-memory"] if shared_memory else []
    work = images.parent
    for round_ in range(ROUNDS_PER_MODE):
        out = work / f"rows-{int(shared_memory)}-{round_}.jsonl"
        with MskProcess("score", "images", "--url", stress_server.grpc_url, "--concurrency",
                        "8", "--out", out.name, "--no-progress", "--no-stdout", *extra,
                        cwd=work) as client:
            deadline = time.monotonic() + 120
            while not (out.exists() and out.read_text().count("\n") >= 2 + round_ % 3):
                assert client.proc.poll() is None, client.output()[-2000:]
                assert time.monotonic() < deadline, "no rows within 120 s"
                time.sleep(0.02)
            client.stop(signal.SIGKILL)                    # requests are in flight now
        assert stress_server.triton_alive(), f"tritonserver died or restarted in round {round_}"
    fresh = run_msk("score", "images/0.png", "images/1.png", "--url", stress_server.grpc_url,
                    "--no-progress", "--timeout", "60", *extra, cwd=work, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    rows = [json.loads(line) for line in fresh.stdout.splitlines()]
    assert [r["error"] for r in rows] == [None, None]
