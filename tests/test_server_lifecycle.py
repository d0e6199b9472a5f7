"""Starting and stopping the real tritonserver: readiness, ports, clean shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.launcher import (
    ServerCrashed,
    ServerStartError,
    TritonServer,
    free_ports,
    group_processes,
)
from tests.msk_process import MskProcess, children

ROOT = Path(__file__).resolve().parent.parent
MSK = Path(sys.executable).parent / "msk"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


_group_members = group_processes


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
    ports = free_ports(3)
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


def _serve(repository: Path, cwd: Path, *extra: str) -> tuple[MskProcess, dict[str, str]]:
    proc = MskProcess("serve", "--repository", str(repository), "--grpc-port", "0",
                      "--http-port", "0", "--metrics-port", "0", *extra, cwd=cwd)
    ready = proc.wait_for(r"msk serve: ready  grpc=(\S+)  http=(\S+)  metrics=(\S+)")
    return proc, dict(zip(("grpc", "http", "metrics"), ready.groups(), strict=True))


def _tritonserver_of(serve_pid: int) -> int:
    """msk serve -> guard -> tritonserver."""
    (guard,) = children(serve_pid)
    (server,) = children(guard)
    return server


def _wait_gone(pids: list[int], timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if _running(p)]
        if not alive:
            return []
        time.sleep(0.2)
    return alive


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"


def test_sigkill_of_msk_serve_takes_tritonserver_and_its_stubs_along(tiny_repository, tmp_path):
    """kill -9 of the launcher (OOM killer, hard container stop) must not orphan Triton."""
    proc, urls = _serve(tiny_repository, tmp_path)
    (guard,) = children(proc.pid)
    served = group_processes(guard)
    assert len(served) >= 3, "guard, tritonserver and stub processes expected"
    proc.stop(signal.SIGKILL)
    assert _wait_gone(served) == [], "tritonserver or a stub outlived a SIGKILLed msk serve"
    grpc_port = int(urls["grpc"].rsplit(":", 1)[1])
    import socket
    with socket.socket() as sock:          # the port is free again: nothing holds it
        sock.bind(("127.0.0.1", grpc_port))


def _metric(url: str, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_msk_serve_restarts_a_crashed_server_and_counts_it(tiny_repository, tmp_path):
    proc, urls = _serve(tiny_repository, tmp_path)
    try:
        offset = len(proc.output())
        os.kill(_tritonserver_of(proc.pid), signal.SIGSEGV)       # the crash, on purpose
        proc.wait_for(r"tritonserver exited unexpectedly \(signal SIGSEGV\); restarting",
                      start=offset)
        proc.wait_for(r"msk serve: ready again", start=offset)
        import tritonclient.grpc as grpcclient
        assert grpcclient.InferenceServerClient(urls["grpc"]).is_server_ready()
        counter = 'msk_serve_triton_restarts_total{reason="exit"}'
        assert _metric(urls["metrics"], counter) == 1.0
        assert _metric(urls["metrics"], "msk_serve_triton_up") == 1.0
    finally:
        assert proc.stop() == 0, proc.output()[-3000:]


def test_msk_serve_no_restart_exits_and_says_why(tiny_repository, tmp_path):
    proc, _ = _serve(tiny_repository, tmp_path, "--no-restart")
    os.kill(_tritonserver_of(proc.pid), signal.SIGKILL)
    assert proc.proc.wait(120) == 1
    assert "exited unexpectedly (signal SIGKILL); not restarting (--no-restart)" in proc.output()


def test_a_server_that_dies_unasked_raises_when_its_block_ends(tiny_repository):
    with pytest.raises(ServerCrashed, match="exited unexpectedly \\(signal SIGKILL\\)"), \
            TritonServer(tiny_repository) as server:
        os.kill([p for p in server.pids() if p != server.process.pid][0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while server.running and time.monotonic() < deadline:
            time.sleep(0.1)
        server.crash_reported = True      # this test asked for it: not the suite's crash
    assert server.shm_regions() == []
