"""Process facts shared by the export (stale staging folders) and the server (stale shm)."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Is process `pid` still there? (A process we may not signal still exists.)"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
