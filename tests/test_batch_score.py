"""`msk score` / `clients.batch` against the real tritonserver serving the tiny stand-in ensemble.

The tiny repository has the real tensor contract (preprocess graph, four members, mean graph,
provenance) with small CNN backbones, so client behaviour is tested in seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from clients.batch import SHM_PREFIX, BatchScorer
from clients.inputs import expand_inputs
from clients.mura import MuraClient
from clients.outputs import read_rows
from clients.rows import SHARED_FIELDS
from msk import RESEARCH_USE_NOTICE
from msk.constants import MURA_MEMBERS
from server.launcher import TritonServer, free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def _batch_server(tiny_repository):
    """tritonserver behind the gRPC guard, as `msk serve` runs it (server/grpc_guard.py)."""
    from server.grpc_guard import GrpcGuard

    with TritonServer(tiny_repository) as server:
        guard = GrpcGuard(server.grpc_url, "127.0.0.1", free_port()).start()
        try:
            yield SimpleNamespace(grpc_url=guard.url, server=server)
        finally:
            guard.stop()


@pytest.fixture()
def tiny_triton(_batch_server):
    """A server of this module's own (shadows the session-wide `tiny_triton`).

    These tests kill and interrupt clients while their requests are in flight. A bare
    tritonserver 2.51 segfaults then (in TRITONBACKEND_ResponseSend: its request-cancellation
    bugs), so the clients talk to it through the gRPC guard that `msk serve` puts in front, which
    never passes a cancellation on; a crash still fails the test (tests/conftest.py).
    """
    return _batch_server


def _mura_images(root: Path, studies: int, per_study: int, seed: int = 0,
                 size: tuple[int, int] = (40, 120)) -> list[Path]:
    """Synthetic radiograph-like PNGs in the MURA layout (random sizes, 8-bit gray)."""
    rng = np.random.default_rng(seed)
    parts = ("XR_WRIST", "XR_ELBOW", "XR_HAND")
    paths = []
    for s in range(studies):
        study = (root / "MURA-v1.1" / "valid" / parts[s % 3] / f"patient{s:05d}"
                 / f"study1_{'positive' if s % 2 else 'negative'}")
        study.mkdir(parents=True, exist_ok=True)
        for i in range(per_study):
            h, w = rng.integers(size[0], size[1], 2)
            pixels = rng.integers(0, 255, (h, w), dtype=np.uint8)
            path = study / f"image{i + 1}.png"
            Image.fromarray(pixels).save(path)
            paths.append(path)
    return paths


def _msk(*args: str) -> list[str]:
    return [sys.executable, "-m", "msk.cli", *args]


def _run_score(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(_msk("score", *args), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def _summary(stderr: str) -> dict:
    line = next(x for x in stderr.splitlines() if x.startswith("msk score: summary "))
    return json.loads(line.removeprefix("msk score: summary "))


def _wait_rows(out: Path, at_least: int, proc: subprocess.Popen, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = out.read_text().count("\n") if out.exists() else 0
        if n >= at_least:
            return n
        assert proc.poll() is None, f"msk score ended early: {proc.communicate()}"
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} rows in {out} after {timeout} s")


def _client(url: str):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(url)


def _registered(url: str, prefix: str) -> list[str]:
    """Names of system shared-memory regions registered on the server under `prefix`."""
    status = _client(url).get_system_shared_memory_status(as_json=True)
    regions = status.get("regions", {})
    names = regions.keys() if isinstance(regions, dict) else [r.get("name") for r in regions]
    return [str(n) for n in names if str(n).startswith(prefix)]


def _unregister_when_idle(url: str, name: str, timeout: float = 60.0) -> None:
    """Unregister a killed client's region once the server's in-flight requests release it."""
    import time

    from tritonclient.utils import InferenceServerException

    deadline = time.monotonic() + timeout
    while True:
        try:
            _client(url).unregister_system_shared_memory(name)
            return
        except InferenceServerException as exc:
            if "in use" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_score_cli_rows_errors_studies_and_resume(tiny_triton, tmp_path):
    images = _mura_images(tmp_path, studies=3, per_study=2)
    corrupt = images[0].parent / "image9.png"
    corrupt.write_bytes(b"this is not a png")
    missing = tmp_path / "missing.png"
    out = tmp_path / "scores.csv"

    proc = _run_score(str(tmp_path / "MURA-v1.1"), str(missing), "--url", tiny_triton.grpc_url,
                      "--out", str(out), "--concurrency", "4", "--no-progress")
    assert proc.returncode == 1, proc.stderr          # finished, with error rows
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert sorted(r["input"] for r in lines) == sorted(
        [str(p) for p in images] + [str(corrupt), str(missing)])
    by_path = {r["input"]: r for r in lines}
    assert by_path[str(corrupt)]["error_reason"] == "unreadable_image"
    assert str(corrupt) in by_path[str(corrupt)]["error"]
    assert by_path[str(missing)]["error_reason"] == "input_not_found"
    assert by_path[str(corrupt)]["probability"] is None

    # Same numbers as the lead's MuraClient for the same files.
    with MuraClient(tiny_triton.grpc_url) as client:
        reference = client.score([str(p) for p in images], heatmaps=False)
    for path, ref in zip(images, reference, strict=True):
        row = by_path[str(path)]
        assert row["error"] is None
        assert row["probability"] == pytest.approx(ref.probability, abs=1e-6)
        assert set(row["members"]) == set(MURA_MEMBERS)
        assert row["versions"] == ref.versions
        assert row["study"] == str(path.parent)

    file_rows = read_rows(out)
    assert sorted(r["input"] for r in file_rows) == sorted(by_path)
    # One row schema: the shared fields, same names, on stdout (JSON) and in the CSV header.
    assert set(SHARED_FIELDS) <= set(out.read_text().splitlines()[0].split(","))
    for row in lines:
        assert set(SHARED_FIELDS) <= set(row) and row["notice"] == RESEARCH_USE_NOTICE, row
    studies = read_rows(out.with_name("scores.studies.csv"))
    assert len(studies) == 3
    for study in studies:
        probs = [r["probability"] for r in lines if r["study"] == study["study"]
                 and r["probability"] is not None]
        assert float(study["probability"]) == pytest.approx(np.mean(probs), abs=1e-6)
        members = [r for r in lines if r["study"] == study["study"] and r["threshold"]]
        assert float(study["threshold"]) == members[0]["threshold"]   # the body part's point
    summary = _summary(proc.stderr)
    assert summary["scored"] == len(images)
    assert summary["errors_by_reason"] == {"unreadable_image": 1, "input_not_found": 1}

    again = _run_score(str(tmp_path / "MURA-v1.1"), str(missing), "--url", tiny_triton.grpc_url,
                       "--out", str(out), "--resume", "--no-progress")
    assert again.stdout == ""
    assert _summary(again.stderr)["skipped_resume"] == len(lines)
    assert len(read_rows(out)) == len(lines)


def test_shared_memory_gives_the_same_results_and_cleans_up(tiny_triton, tmp_path):
    images = _mura_images(tmp_path, studies=1, per_study=3)
    big = tmp_path / "big.png"                       # larger than the first 1 MiB region
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (1600, 1300), np.uint8)).save(big)
    from tests.plugins.pacs import real_radiograph

    real = tmp_path / "cr-extremity.dcm"           # real CR radiograph, 10-bit, MONOCHROME1
    real.write_bytes(real_radiograph().read_bytes())
    items = expand_inputs([str(p) for p in [*images, big, real]])

    def score(shared: bool) -> dict[str, dict]:
        rows: list[dict] = []
        scorer = BatchScorer(tiny_triton.grpc_url, concurrency=2, shared_memory=shared)

        async def go() -> None:
            await scorer.wait_ready(30)
            await scorer.run(items, None, on_row=rows.append)

        asyncio.run(go())
        return {r["input"]: r for r in rows}

    plain, shared = score(False), score(True)
    assert sorted(plain) == sorted(shared) == sorted(i.path for i in items)
    for path, row in plain.items():
        assert row["error"] is None and shared[path]["error"] is None, shared[path]
        assert shared[path]["probability"] == pytest.approx(row["probability"], abs=1e-6)
    from msk.imaging import load_grayscale

    with MuraClient(tiny_triton.grpc_url) as client:
        reference = client.score([load_grayscale(real)], heatmaps=False)[0]
    assert shared[str(real)]["probability"] == pytest.approx(reference.probability, abs=1e-6)
    assert not list(Path("/dev/shm").glob(f"{SHM_PREFIX}{os.getpid()}_*"))
    assert not _registered(tiny_triton.grpc_url, f"{SHM_PREFIX}{os.getpid()}_")


def test_server_killed_and_restarted_mid_batch_every_image_exactly_once(tiny_repository,
                                                                        tmp_path):
    images = _mura_images(tmp_path, studies=60, per_study=4, seed=2)     # 240 images
    out = tmp_path / "scores.jsonl"
    with TritonServer(tiny_repository) as server:
        proc = subprocess.Popen(
            _msk("score", str(tmp_path / "MURA-v1.1"), "--url", server.grpc_url, "--out",
                 str(out), "--concurrency", "8", "--retry-for", "180", "--no-progress",
                 "--no-stdout"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        done_at_kill = _wait_rows(out, 30, proc)
        server.kill()                                   # SIGKILL: a crash, not a drain
        time.sleep(1.0)
        server.start()                                  # same ports; blocks until ready
        _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert done_at_kill < len(images)
    rows = read_rows(out)
    paths = [r["input"] for r in rows]
    assert sorted(paths) == sorted(str(p) for p in images)     # each exactly once
    assert not [r for r in rows if r["error"]]
    summary = _summary(stderr)
    assert summary["retries"] > 0 and summary["scored"] == len(images)
    assert max(r["attempts"] for r in rows) > 1


def test_client_killed_mid_batch_then_resumed_with_shared_memory(tiny_triton, tmp_path):
    images = _mura_images(tmp_path, studies=50, per_study=4, seed=3)     # 200 images
    out = tmp_path / "scores.csv"
    args = (str(tmp_path / "MURA-v1.1"), "--url", tiny_triton.grpc_url, "--out",
            str(out), "--concurrency", "4", "--shared-memory", "--no-progress", "--no-stdout")
    metrics_port = free_port()
    proc = subprocess.Popen(_msk("score", *args, "--metrics-port", str(metrics_port)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        _wait_rows(out, 40, proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:  # SIGKILL leaves the client's regions behind, on disk and registered
        for region in Path("/dev/shm").glob(f"{SHM_PREFIX}{proc.pid}_*"):
            region.unlink(missing_ok=True)
        for name in _registered(tiny_triton.grpc_url, f"{SHM_PREFIX}{proc.pid}_"):
            _unregister_when_idle(tiny_triton.grpc_url, name)
    first = len(read_rows(out))
    assert 0 < first < len(images)
    ok = re.search(r'msk_client_requests_total\{outcome="ok",pipeline="[a-z_]+"\} (\S+)', metrics)
    assert ok and float(ok.group(1)) >= 30, metrics
    assert "msk_client_bytes_sent_total{" not in metrics   # pixels went through shared memory

    resumed = _run_score(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    summary = _summary(resumed.stderr)
    assert summary["skipped_resume"] == first
    assert summary["scored"] == len(images) - first
    rows = read_rows(out)
    assert sorted(r["input"] for r in rows) == sorted(str(p) for p in images)
    assert not [r for r in rows if r["error"]]


def test_sigterm_ends_the_run_cleanly_with_shared_memory(tiny_triton, tmp_path):
    _mura_images(tmp_path, studies=40, per_study=4, seed=4)
    out = tmp_path / "scores.jsonl"
    proc = subprocess.Popen(
        _msk("score", str(tmp_path / "MURA-v1.1"), "--url", tiny_triton.grpc_url, "--out",
             str(out), "--concurrency", "4", "--shared-memory", "--no-progress", "--no-stdout"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    _wait_rows(out, 20, proc)
    proc.terminate()                                  # SIGTERM, as `docker stop` sends
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "rerun with --resume" in stderr
    assert not list(Path("/dev/shm").glob(f"{SHM_PREFIX}{proc.pid}_*"))
    assert not _registered(tiny_triton.grpc_url, f"{SHM_PREFIX}{proc.pid}_")
    rows = read_rows(out)
    assert rows and len({r["input"] for r in rows}) == len(rows)


def _private_shm_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs none /dev/shm"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def test_shared_memory_with_a_server_on_another_host_fails_fast(tiny_triton, tmp_path):
    """The client runs with a private /dev/shm (as on another host): one clear error at start,
    not one retried error per image."""
    if not _private_shm_works():
        pytest.skip("needs `unshare -m` (root) to give the client its own /dev/shm")
    image = _mura_images(tmp_path, studies=1, per_study=1)[0]
    command = " ".join(shlex.quote(c) for c in _msk(
        "score", str(image), "--url", tiny_triton.grpc_url, "--shared-memory", "--no-progress"))
    proc = subprocess.run(["unshare", "-m", "sh", "-c",
                           f"mount -t tmpfs none /dev/shm && exec {command}"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 3, proc.stderr
    assert "cannot map this host's /dev/shm" in proc.stderr
    assert proc.stdout == ""
