"""`msk serve` heals a model that stopped serving, and cleans up after killed shared-memory
clients, against the real tritonserver on loopback.

* A python-backend stub that dies leaves Triton "ready" while the model fails every request; the
  supervisor's StubWatch (server/health.py) notices within its poll, readiness turns false while
  Triton restarts, the service answers again, and `msk_serve_triton_restarts_total{reason=
  "unhealthy"}` counts it.
* `msk score --shared-memory` clients SIGKILLed mid-run leave registrations behind; the janitor
  (server/shm_janitor.py) unregisters them, and tritonserver's RSS after ten kill rounds stays
  within 20 % of its level after warm-up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import psutil
import tritonclient.grpc as grpcclient
from PIL import Image

from msk.constants import MURA_ENSEMBLE_MODEL, SCORE_SHM_PREFIX
from server.health import STUB_NAME
from tests.plugins.msk_serve import REPO_ROOT, running_msk_serve

KILL_ROUNDS = 10


def _ready(http_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{http_url}/v2/health/ready", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _wait(predicate, limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < deadline, f"not within {limit_s:.0f} s: {what}"
        time.sleep(0.1)


def _infer_ok(grpc_url: str) -> bool:
    client = grpcclient.InferenceServerClient(grpc_url)
    inp = grpcclient.InferInput("IMAGE", [64, 48], "UINT8")
    inp.set_data_from_numpy(np.full((64, 48), 77, np.uint8))
    try:
        client.infer(MURA_ENSEMBLE_MODEL, [inp], client_timeout=30)
        return True
    except Exception:  # noqa: BLE001 - "not serving" is what is being measured
        return False
    finally:
        client.close()


def _stub_of(serve_pid: int, model: str) -> psutil.Process:
    for child in psutil.Process(serve_pid).children(recursive=True):
        if child.name() == STUB_NAME and f"/{model}/" in child.cmdline()[1]:
            return child
    raise AssertionError(f"no python-backend process for {model}")


def _restarts(metrics_url: str, reason: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(f'msk_serve_triton_restarts_total{{reason="{reason}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_dead_model_process_turns_readiness_false_and_is_healed(tiny_repository):
    with running_msk_serve("serve", "--repository", str(tiny_repository)) as serve:
        assert _infer_ok(serve.grpc_url)
        _stub_of(serve.proc.pid, "mura_preprocess").kill()
        _wait(lambda: not _ready(serve.http_url), 30, "readiness turns false")
        _wait(lambda: _ready(serve.http_url), 300, "the service is ready again")
        _wait(lambda: _infer_ok(serve.grpc_url), 120, "the ensemble serves again")
        assert _restarts(serve.metrics_url, "unhealthy") == 1.0
        assert serve.proc.poll() is None


def _registered(grpc_url: str) -> list[str]:
    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        regions = client.get_system_shared_memory_status(as_json=True).get("regions") or {}
    finally:
        client.close()
    return [r["key"] for r in regions.values() if SCORE_SHM_PREFIX in r["key"]]


def test_killed_shared_memory_clients_are_unregistered_and_rss_returns(tiny_repository,
                                                                       tmp_path):
    rng = np.random.default_rng(7)
    images = []
    for i in range(24):
        path = tmp_path / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (1800, 1500), dtype=np.uint8)).save(path)
        images.append(str(path))

    def score(*paths: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "msk.cli", "score", *paths, "--url", serve.grpc_url,
             "--shared-memory", "--concurrency", "8", "--no-progress"],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            start_new_session=True)

    with running_msk_serve("serve", "--repository", str(tiny_repository),
                           "--allow-client-shm") as serve:
        warm = score(*images[:16])
        assert warm.wait(300) == 0
        _wait(lambda: not _registered(serve.grpc_url), 30, "warm-up regions unregistered")
        baseline = serve.triton_rss_bytes()
        for _ in range(KILL_ROUNDS):
            proc = score(*images)
            for _row in range(2):         # kill it mid-run, regions registered and in use
                assert proc.stdout.readline(), "msk score ended before it was killed"
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
            assert _registered(serve.grpc_url), "the killed client left no registration?"
            _wait(lambda: not _registered(serve.grpc_url), 60,
                  "stale registrations of the killed client are unregistered")
        final = serve.triton_rss_bytes()
        assert serve.triton_alive()
    assert final <= 1.2 * baseline, (
        f"tritonserver RSS {final / 2**20:.0f} MiB after {KILL_ROUNDS} kill rounds vs "
        f"{baseline / 2**20:.0f} MiB after warm-up")
