"""`msk serve` as users run it (a subprocess on free loopback ports), for boundary tests.

`running_msk_serve("serve", "--repository", DIR, *flags)` (free ports are added) yields a
`ServeProcess` once the command printed its ready line; `tritonserver_pid()` finds the
tritonserver child so tests can watch its memory and notice a crash (a restarted or missing
server fails the test: Triton must not crash silently).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
_READY = re.compile(r"ready\s+grpc=(\S+)\s+http=(\S+)\s+metrics=(\S+)")


@dataclass
class ServeProcess:
    proc: subprocess.Popen
    grpc_url: str
    http_url: str
    metrics_url: str
    triton_pid: int
    lines: list[str] | None = None
    """Everything msk serve and its tritonserver printed so far (kept for crash checks)."""

    def tritonserver_pid(self) -> int | None:
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.name() == "tritonserver":
                    return child.pid
        return None

    def triton_rss_bytes(self) -> int:
        return psutil.Process(self.triton_pid).memory_info().rss

    def triton_alive(self) -> bool:
        """The same tritonserver process that started is still running (no crash, no restart)."""
        return self.proc.poll() is None and self.tritonserver_pid() == self.triton_pid


@contextlib.contextmanager
def running_msk_serve(*args: str) -> Iterator[ServeProcess]:
    assert args[:1] == ("serve",), "the command line starts with the subcommand"
    proc = subprocess.Popen(
        [sys.executable, "-m", "msk.cli", *args, "--grpc-port", "0", "--http-port", "0",
         "--metrics-port", "0"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        match = None
        for line in proc.stdout:
            match = _READY.search(line)
            if match:
                break
        assert match, f"msk serve exited with {proc.wait(30)} before it was ready"
        serve = ServeProcess(proc, match.group(1), match.group(2), match.group(3), 0, [])
        # Keep draining stderr so the server never blocks on a full pipe.
        import threading
        threading.Thread(target=lambda: serve.lines.extend(proc.stdout), daemon=True).start()
        serve.triton_pid = serve.tritonserver_pid()
        assert serve.triton_pid, "msk serve is ready but runs no tritonserver"
        yield serve
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)


@pytest.fixture(scope="module")
def tiny_msk_serve(tiny_repository) -> Iterator[ServeProcess]:
    """`msk serve` (default flags) on the tiny repository, one per test module."""
    with running_msk_serve("serve", "--repository", str(tiny_repository)) as serve:
        yield serve
