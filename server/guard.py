"""Run tritonserver so that it, and every python-backend stub it starts, dies with its launcher.

    python server/guard.py -- tritonserver --model-repository=...

`server.launcher.TritonServer` starts this small standard-library-only program (it is run by
path, so it imports nothing of the project) instead of tritonserver itself, because a plain
child can be orphaned: `kill -9` of `msk serve` (an OOM killer, a hard container stop) left
tritonserver and its stubs running for 44 minutes, holding ports, shared memory and ~4 GB.

- The kernel tells the guard when its launcher dies (`PR_SET_PDEATHSIG`, SIGTERM); the guard then
  stops tritonserver as on a normal shutdown.
- tritonserver gets `PR_SET_PDEATHSIG` = SIGKILL, so it dies even if the guard is SIGKILLed.
- The guard is a child subreaper (`PR_SET_CHILD_SUBREAPER`): stubs orphaned by a crashed server are
  re-parented to it (not to PID 1, which in containers often reaps nothing, so a stub would keep
  seeing a zombie parent "alive"), and it kills whatever is left of its process group before it
  exits.
- It exits the way tritonserver did: the same code, or the same signal re-raised, so the launcher
  can say "tritonserver died with SIGSEGV".
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
STOP_GRACE_S = float(os.environ.get("MSK_TRITON_STOP_GRACE_S", "30"))
_stop_requested = False


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _request_stop(_signum: int, _frame: object) -> None:
    global _stop_requested
    _stop_requested = True


def _group_members() -> list[int]:
    """PIDs in this process group other than the guard itself (stubs, a surviving server)."""
    me, group = os.getpid(), os.getpgrp()
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:              # fields after "(comm)": state, ppid, pgrp
            members.append(int(entry))
    return members


def _kill_leftovers() -> None:
    for pid in _group_members():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:       # reap what was re-parented to us
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                time.sleep(0.05)
        except ChildProcessError:
            return


def _start(command: list[str]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            os.execvp(command[0], command)
        finally:
            os._exit(127)
    return pid


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        print("usage: guard.py -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    command = argv[argv.index("--") + 1:]
    launcher = os.getppid()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _request_stop)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != launcher:               # the launcher died before the line above
        return 1
    server = _start(command)
    status, stop_sent = None, None
    while status is None:
        if _stop_requested and stop_sent is None:
            os.kill(server, signal.SIGTERM)
            stop_sent = time.monotonic()
        if stop_sent is not None and time.monotonic() - stop_sent > STOP_GRACE_S:
            os.kill(server, signal.SIGKILL)
        try:
            pid, code = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == server:
            status = code
        elif pid == 0:
            time.sleep(0.1)
    _kill_leftovers()
    if status is None:
        return 1
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)               # exit the way tritonserver did
        return 128 + sig
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
