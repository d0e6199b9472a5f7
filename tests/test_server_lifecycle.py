"""Starting and stopping the real tritonserver: readiness, ports, clean shutdown (issue #2)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.launcher import ServerStartError, TritonServer, free_port

ROOT = Path(__file__).resolve().parent.parent
MSK = Path(sys.executable).parent / "msk"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _group_members(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,pgid="], capture_output=True, text=True).stdout
    return [int(p) for p, g in (line.split() for line in out.splitlines()) if int(g) == pgid]


def test_stop_leaves_no_process_and_no_shm_region(tiny_repository):
    server = TritonServer(tiny_repository).start()
    pid = server.process.pid
    assert server.is_ready()
    assert server.shm_regions(), "python backend should hold shm regions while running"
    assert len(_group_members(pid)) > 1, "stub processes expected in the server's group"
    assert server.stop() == 0
    assert not _alive(pid) and _group_members(pid) == []
    assert server.shm_regions() == []


def test_kill_then_restart_on_the_same_ports(tiny_repository):
    server = TritonServer(tiny_repository).start()
    ports = (server.grpc_port, server.http_port, server.metrics_port)
    server.kill()
    assert server.shm_regions() == [] and not server.is_ready()
    server.start()
    try:
        assert server.is_ready()
        assert (server.grpc_port, server.http_port, server.metrics_port) == ports
    finally:
        server.stop()


def test_broken_repository_reports_the_log(tmp_path, tiny_repository):
    broken = tmp_path / "repo"
    (broken / "mura_preprocess" / "1").mkdir(parents=True)
    (broken / "mura_preprocess" / "config.pbtxt").write_text(
        (tiny_repository / "mura_preprocess" / "config.pbtxt").read_text())
    (broken / "mura_preprocess" / "1" / "model.onnx").write_bytes(b"not onnx")
    server = TritonServer(broken, startup_timeout=120)
    with pytest.raises(ServerStartError) as info:
        server.start()
    assert "mura_preprocess" in str(info.value)
    assert server.shm_regions() == []


def test_msk_serve_runs_until_sigterm(tiny_repository):
    ports = [free_port() for _ in range(3)]
    proc = subprocess.Popen(
        [str(MSK), "serve", "--repository", str(tiny_repository), "--grpc-port", str(ports[0]),
         "--http-port", str(ports[1]), "--metrics-port", str(ports[2])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    import urllib.request
    deadline = time.monotonic() + 300
    ready = False
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports[1]}/v2/health/ready",
                                        timeout=2) as r:
                ready = r.status == 200
        except OSError:
            pass
        if ready:
            break
        time.sleep(0.5)
    assert ready, proc.stderr.read() if proc.poll() is not None else "not ready"
    before = set(Path("/dev/shm").iterdir())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0
    leftovers = [p for p in before if p.exists() and p.name.startswith(f"msk_{proc.pid}_")]
    assert leftovers == []
