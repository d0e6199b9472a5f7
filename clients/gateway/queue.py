"""Durable on-disk study queue: a study received is never lost, only delayed.

Every state is a directory, every transition an atomic rename, so a crash (SIGKILL, power loss)
at any point leaves each study in exactly one recoverable state:

    root/tmp/                      files being written (discarded at start)
    root/incoming/<study>/         instances as received; dir mtime = last arrival
    root/pending/<batch>/          a stable study awaiting scoring (+ state.json)
    root/outbox/<batch>/           result objects awaiting delivery (+ state.json, result.json)
    root/dead/<batch>/             permanent failures, with reason.json

`<study>` is a hash of the Study Instance UID (no UIDs in file names); `<batch>` adds the time
the study became stable, so instances arriving after that form a new batch instead of racing
with scoring. A C-STORE is acknowledged only after its file has been renamed into `incoming/`.
Retries: each failed attempt increments `attempts` and sets `not_before` with exponential
backoff; after `max_attempts` the batch moves to `dead/`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

STATES = ("incoming", "pending", "outbox", "dead")
STATE_FILE = "state.json"
REASON_FILE = "reason.json"


class QueueLockedError(RuntimeError):
    """Another gateway process owns this data directory."""


def study_key(study_uid: str) -> str:
    return hashlib.sha256(study_uid.encode()).hexdigest()[:20]


def instance_name(sop_uid: str) -> str:
    return hashlib.sha256(sop_uid.encode()).hexdigest()[:24] + ".dcm"


@dataclass
class BatchState:
    """Retry bookkeeping of one batch, stored as state.json next to its files."""

    attempts: int = 0
    """All failed attempts (drives the backoff)."""
    failures: int = 0
    """Failed attempts that were not outages (drives the dead-letter decision)."""
    not_before: float = 0.0
    last_error: str | None = None
    created: float = 0.0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, tmp_dir: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=".w-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class StudyQueue:
    """The queue in `root`; one process at a time (an exclusive lock file enforces it)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        for name in (*STATES, "tmp"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        self._lock_fh = open(self.root / ".lock", "w")  # noqa: SIM115 - held for our lifetime
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._lock_fh.close()
            raise QueueLockedError(f"{self.root} is in use by another gateway process") from exc
        self._mutex = threading.Lock()
        self.recover()

    def close(self) -> None:
        if not self._lock_fh.closed:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()

    def dir(self, state: str) -> Path:
        return self.root / state

    # ------------------------------------------------------------------ receiving
    def store(self, study_uid: str, sop_uid: str, data: bytes) -> Path:
        """Persist one received instance; returns only once it is durable in incoming/."""
        fd, tmp = tempfile.mkstemp(dir=self.tmp, prefix=".in-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        with self._mutex:
            study_dir = self.dir("incoming") / study_key(study_uid)
            study_dir.mkdir(exist_ok=True)
            target = study_dir / instance_name(sop_uid)
            os.replace(tmp, target)
            os.utime(study_dir)
            _fsync_dir(study_dir)
        return target

    def stable(self, stable_seconds: float, now: float | None = None) -> list[str]:
        """Studies in incoming/ with no new instance for `stable_seconds`."""
        now = time.time() if now is None else now
        out = []
        for study_dir in sorted(self.dir("incoming").iterdir()):
            with contextlib.suppress(FileNotFoundError):
                if now - study_dir.stat().st_mtime >= stable_seconds:
                    out.append(study_dir.name)
        return out

    def promote(self, key: str, now: float | None = None) -> str | None:
        """incoming/<key> -> pending/<key>-<ms>; returns the batch name (None if it vanished)."""
        now = time.time() if now is None else now
        batch = f"{key}-{int(now * 1000)}"
        with self._mutex:
            src = self.dir("incoming") / key
            if not src.exists():
                return None
            files = [p for p in src.iterdir() if p.suffix == ".dcm"]
            if not files:
                shutil.rmtree(src, ignore_errors=True)
                return None
            self._write_state(src, BatchState(created=now))
            os.rename(src, self.dir("pending") / batch)
            _fsync_dir(self.dir("pending"))
        return batch

    # ------------------------------------------------------------------ batches
    def batches(self, state: str) -> list[str]:
        return sorted(p.name for p in self.dir(state).iterdir() if p.is_dir())

    def due(self, state: str, now: float | None = None) -> list[str]:
        """Batches in `state` whose backoff has elapsed, oldest first."""
        now = time.time() if now is None else now
        return [b for b in self.batches(state) if self.state(state, b).not_before <= now]

    def files(self, state: str, batch: str) -> list[Path]:
        return sorted(p for p in (self.dir(state) / batch).iterdir() if p.suffix == ".dcm")

    def state(self, state: str, batch: str) -> BatchState:
        path = self.dir(state) / batch / STATE_FILE
        try:
            return BatchState(**json.loads(path.read_text()))
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return BatchState()

    def _write_state(self, batch_dir: Path, st: BatchState) -> None:
        _write_atomic(batch_dir / STATE_FILE, json.dumps(asdict(st)).encode(), self.tmp)

    def failed(self, state: str, batch: str, error: str, max_attempts: int, backoff_s: float,
               now: float | None = None, outage: bool = False) -> bool:
        """Record a failed attempt; returns True if the batch was moved to dead/.

        An outage (Triton or the PACS unreachable) only delays a batch: it backs off but never
        counts towards `max_attempts`, so a study survives an outage of any length. Failures
        that may be about the study itself (rejections, error statuses) do count.
        """
        now = time.time() if now is None else now
        st = self.state(state, batch)
        st.attempts += 1
        st.failures += 0 if outage else 1
        st.last_error = error
        st.not_before = now + backoff_s
        self._write_state(self.dir(state) / batch, st)
        if st.failures >= max_attempts:
            self.dead_letter(state, batch, f"gave up after {st.failures} failed attempts: "
                             f"{error}")
            return True
        return False

    def dead_letter(self, state: str, batch: str, reason: str) -> Path:
        """Move a batch to dead/ with reason.json (what failed, at which stage, how often)."""
        src = self.dir(state) / batch
        st = self.state(state, batch)
        info = {"stage": state, "reason": reason, "attempts": st.attempts,
                "time": time.time()}
        _write_atomic(src / REASON_FILE, json.dumps(info, indent=2).encode(), self.tmp)
        target = self.dir("dead") / batch
        os.rename(src, target)
        _fsync_dir(self.dir("dead"))
        return target

    def stage_outbox(self, batch: str, results: dict[str, bytes], summary: dict) -> Path:
        """Atomically create outbox/<batch> with the result objects, then drop pending/<batch>."""
        build = Path(tempfile.mkdtemp(dir=self.tmp, prefix=".out-"))
        for name, data in results.items():
            (build / name).write_bytes(data)
        (build / "result.json").write_text(json.dumps(summary, indent=2, default=str))
        self._write_state(build, BatchState(created=time.time()))
        for path in build.iterdir():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        target = self.dir("outbox") / batch
        os.rename(build, target)
        _fsync_dir(self.dir("outbox"))
        shutil.rmtree(self.dir("pending") / batch, ignore_errors=True)
        return target

    def summary(self, batch: str) -> dict:
        return json.loads((self.dir("outbox") / batch / "result.json").read_text())

    def done(self, state: str, batch: str) -> None:
        shutil.rmtree(self.dir(state) / batch, ignore_errors=True)

    def depth(self) -> dict[str, int]:
        """Studies per state (incoming counts studies, the others batches)."""
        return {s: len(self.batches(s)) for s in STATES}

    # ------------------------------------------------------------------ crash recovery
    def recover(self) -> None:
        """Undo half-done work of a killed process: leftover temp files, and pending batches
        whose results were already staged (crash between the rename and the removal)."""
        for leftover in self.tmp.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        outbox = set(self.batches("outbox"))
        for batch in self.batches("pending"):
            if batch in outbox:
                shutil.rmtree(self.dir("pending") / batch, ignore_errors=True)
