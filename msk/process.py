"""Process facts shared by the export (stale staging folders), `msk score` and the server
(shared-memory regions left by dead processes)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import subprocess
from pathlib import Path

SHM_ROOT = Path("/dev/shm")


def pid_alive(pid: int) -> bool:
    """Is process `pid` still there? (A process we may not signal still exists.)

    A zombie is dead: it has exited, closed its files and holds no memory; only its parent's
    `wait` is missing. Where nobody reaps orphans (PID 1 in some containers) a SIGKILLed client
    stays a zombie for good, and its leftovers must not be kept for it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


def hold_region(path: Path | str) -> int:
    """Open `path` and take a shared `flock` on it for as long as the returned descriptor stays
    open (close it when the region is destroyed); `owner_gone` reads it.

    Why a lock next to the pid in the name: the kernel drops the lock when the owner dies, in
    any pid namespace. A client in another container sharing /dev/shm (Docker `ipc: host`) has
    a pid that means nothing (or another process) here; its lock still says it is alive."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def owner_gone(path: Path, pid: int) -> bool:
    """Is the process that created region `path` (its pid is in the name) gone?

    Only when the pid is dead here and nobody holds `hold_region`'s lock on the file: a live
    pid (even a reused one) or a held lock keeps the region. A file we may not open is judged
    by the pid alone."""
    if pid_alive(pid):
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    except OSError:                      # another user's 0600 file: the pid is all we can read
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False                     # its owner, in another pid namespace, holds it
    finally:
        os.close(fd)                     # also drops our probe lock
    return True


def remove_dead_owners_regions(prefix: str, root: Path = SHM_ROOT) -> list[Path]:
    """Remove the regions `<root>/<prefix><pid>_*` of this user whose owner is gone.

    Why: a SIGKILLed `msk score --shared-memory` (an OOM kill, a container stop, a CI timeout)
    never removes its regions, and /dev/shm is RAM: one CI run left 11 files of 4 MiB. Files of
    other users, links and anything that is not a regular file are left alone, as is every
    region of a live owner (`owner_gone`). Returns the removed paths."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)_")
    removed = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    uid = os.geteuid()
    for name in names:
        match = pattern.match(name)
        if not match:
            continue
        path = root / name
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(info.st_mode) or info.st_uid != uid:
            continue
        if owner_gone(path, int(match.group(1))):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


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
