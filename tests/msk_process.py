"""Run the `msk` console command the way a user does: `.venv/bin/msk ...` as a process, from a
working directory, with relative paths. Used by the tests of every subcommand."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

MSK = Path(sys.executable).parent / "msk"
_counter = itertools.count()


def run_msk(*args: str, cwd: Path, timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `msk ARGS` to completion; stdout and stderr kept apart (results vs. messages)."""
    return subprocess.run([str(MSK), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=None if env is None else {**os.environ, **env})


class MskProcess:
    """A long-running `msk ARGS` (serve, web, gateway); its output goes to a log file."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.log = Path(cwd) / f".msk-{args[0]}-{next(_counter)}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(MSK), *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                env=None if env is None else {**os.environ, **env})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 300, start: int = 0) -> re.Match:
        """The first match of `pattern` in the output after offset `start`; fails with the
        output if the process exits or `timeout` passes first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.compile(pattern).search(self.output(), start)
            if match:
                return match
            if self.proc.poll() is not None:
                raise AssertionError(f"msk exited ({self.proc.returncode}) before printing "
                                     f"{pattern!r}:\n{self.output()[-4000:]}")
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} after {timeout:.0f} s:\n{self.output()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def __enter__(self) -> MskProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(60)


def children(pid: int) -> list[int]:
    """Direct, live children of `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != b"Z":
                out.append(int(entry.name))
    return out
