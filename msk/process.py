"""Process facts shared by the export (stale staging folders) and the server (stale shm)."""

from __future__ import annotations

import os
import subprocess


def pid_alive(pid: int) -> bool:
    """Is process `pid` still there? (A process we may not signal still exists.)"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process(process: subprocess.Popen, grace_s: float = 15.0) -> int:
    """SIGTERM, wait up to `grace_s`, then SIGKILL: how every helper process we start (HAProxy,
    Prometheus, moto, the web app...) is ended, so that none outlives its owner even when it
    ignores the polite signal. Returns the exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()
