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
- tritonserver and its stubs create files readable by their own user only: the python backend
  passes every image through `/dev/shm` regions, and patient pixels must not be world-readable.
  A umask of 077 alone does not do it: the backend creates its regions with boost.interprocess,
  which `fchmod`s each new region to 0644 after creating it (measured: 0644 under umask 077). So
  tritonserver also runs under a seccomp filter that turns an `fchmod` granting group or other
  users any access into a no-op that reports success; a region keeps the 0600 it was created with.
  This is a permission policy, not a sandbox (other syscalls are untouched). Where the kernel
  refuses the filter, tritonserver is not started (exit 126): images would be world-readable.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import signal
import struct
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2
PRIVATE_UMASK = 0o077
FCHMOD = {"x86_64": (0xC000003E, 91), "aarch64": (0xC00000B7, 52)}
"""Per machine: the seccomp audit arch and the number of the `fchmod` syscall."""
EXIT_NOT_PRIVATE = 126
STOP_GRACE_S = float(os.environ.get("MSK_TRITON_STOP_GRACE_S", "30"))
_stop_requested = False


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _fchmod_filter(arch: int, fchmod_nr: int) -> bytes:
    """A classic-BPF seccomp program: `fchmod(fd, mode)` with any of the bits 077 in `mode`
    returns 0 without running; every other syscall (and other architectures) is allowed."""
    ld_abs, jeq, jset, ret = 0x20, 0x15, 0x45, 0x06
    ret_errno_0, ret_allow = 0x00050000, 0x7FFF0000
    program = [
        (ld_abs, 0, 0, 4),                     # A = seccomp_data.arch
        (jeq, 0, 5, arch),                     # another architecture: allow
        (ld_abs, 0, 0, 0),                     # A = seccomp_data.nr
        (jeq, 0, 3, fchmod_nr),                # not fchmod: allow
        (ld_abs, 0, 0, 24),                    # A = low 32 bits of args[1], the mode
        (jset, 0, 1, PRIVATE_UMASK),           # mode & 077: group/other access asked for
        (ret, 0, 0, ret_errno_0),              # ... then "succeed" without changing the mode
        (ret, 0, 0, ret_allow),
    ]
    return b"".join(struct.pack("<HBBI", *insn) for insn in program)


def _keep_files_private() -> None:
    """umask 077 and the `fchmod` filter for this process and all it executes (see module doc);
    raises OSError where the kernel or machine does not allow it."""
    os.umask(PRIVATE_UMASK)
    if platform.machine() not in FCHMOD:
        raise OSError(f"no fchmod filter for machine {platform.machine()!r}")
    code = _fchmod_filter(*FCHMOD[platform.machine()])
    buffer = ctypes.create_string_buffer(code, len(code))

    class SockFprog(ctypes.Structure):
        _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))

    program = SockFprog(len(code) // 8, ctypes.addressof(buffer))
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    libc = ctypes.CDLL(None, use_errno=True)
    ulong = ctypes.c_ulong
    if libc.prctl(PR_SET_SECCOMP, ulong(SECCOMP_MODE_FILTER), ctypes.byref(program), ulong(0),
                  ulong(0)) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")


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
            try:
                _keep_files_private()
            except OSError as exc:
                os.write(2, f"guard.py: cannot keep tritonserver's shared memory private to "
                            f"its user ({exc}); not starting it\n".encode())
                os._exit(EXIT_NOT_PRIVATE)
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
