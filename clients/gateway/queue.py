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

Several processes may share one queue (`shared=True`, e.g. gateway replicas on one ReadWriteMany
volume): each works a batch only while it holds that batch's claim (an flock that dies with its
process, so a killed worker's batch is simply claimed by another), receiving and promotion are
serialised by a lock file, and each process writes temporary files in its own `tmp/<owner>/`,
which recovery removes only once its owner is gone. Without `shared`, one process owns the
folder (an exclusive lock), as before.
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
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

STATES = ("incoming", "pending", "outbox", "dead")
STATE_FILE = "state.json"
REASON_FILE = "reason.json"


class QueueLockedError(RuntimeError):
    """Another gateway process owns this data directory."""


def study_key(study_uid: str) -> str:
    return hashlib.sha256(study_uid.encode()).hexdigest()[:20]


INSTANCE_SUFFIX = ".dcm"
"""The queue names every stored instance `<hash>.dcm`; only such files are instances."""


def instance_name(sop_uid: str) -> str:
    return hashlib.sha256(sop_uid.encode()).hexdigest()[:24] + INSTANCE_SUFFIX


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


class _FileLock:
    """Cross-process mutual exclusion (flock on a file) plus a thread lock for this process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = threading.Lock()

    def __enter__(self) -> None:
        self._thread.acquire()
        self._fh = open(self.path, "a")  # noqa: SIM115 - closed in __exit__
        fcntl.flock(self._fh, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()
        self._thread.release()


class StudyQueue:
    """The queue in `root`: one process (default) or several with `shared=True`."""

    def __init__(self, root: str | Path, shared: bool = False) -> None:
        self.root = Path(root)
        self.shared = shared
        for name in (*STATES, "tmp", "claims"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        self._lock_fh = open(self.root / ".lock", "w")  # noqa: SIM115 - held for our lifetime
        try:
            fcntl.flock(self._lock_fh, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
                        | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._lock_fh.close()
            raise QueueLockedError(f"{self.root} is in use by another gateway process"
                                   + ("" if shared else " (several need --shared-queue)")
                                   ) from exc
        self._mutex = _FileLock(self.root / ".incoming.lock")
        self.tmp = self.root / "tmp"
        self._owner_fh = None
        if shared:  # our own scratch folder, held by an flock while we live
            self.tmp = self.root / "tmp" / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self.tmp.mkdir()
            self._owner_fh = open(self.tmp / ".owner", "w")  # noqa: SIM115 - held while we live
            fcntl.flock(self._owner_fh, fcntl.LOCK_EX)
        self.recover()

    def close(self) -> None:
        if self._owner_fh is not None and not self._owner_fh.closed:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self._owner_fh.close()
        if not self._lock_fh.closed:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()

    # ------------------------------------------------------------------ claims (shared queues)
    @contextlib.contextmanager
    def claim(self, state: str, batch: str) -> Iterator[bool]:
        """Hold `batch` for this process while the block runs; yields False when another
        process holds it or it has left `state`. The flock dies with a killed process."""
        path = self.root / "claims" / f"{batch}.lock"
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                # The file may have been removed by its previous holder after we opened it.
                if os.fstat(fd).st_ino != os.stat(path).st_ino:
                    yield False
                    return
            except FileNotFoundError:
                yield False
                return
            try:
                yield (self.dir(state) / batch).is_dir()
            finally:
                if not (self.dir(state) / batch).is_dir():  # moved on: the claim is spent
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
        finally:
            os.close(fd)

    def claimed(self, state: str, now: float | None = None) -> Iterator[str]:
        """Due batches of `state`, each yielded while this process holds its claim."""
        for batch in self.due(state, now):
            with self.claim(state, batch) as mine:
                if mine:
                    yield batch

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
            files = [p for p in src.iterdir() if p.suffix == INSTANCE_SUFFIX]
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
        return sorted(p for p in (self.dir(state) / batch).iterdir() if p.suffix == INSTANCE_SUFFIX)

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
        for leftover in (self.root / "tmp").iterdir():
            if leftover == self.tmp or (self.shared and self._owner_alive(leftover)):
                continue
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        outbox = set(self.batches("outbox"))
        for batch in self.batches("pending"):
            if batch in outbox:
                with self.claim("pending", batch) as mine:
                    if mine:
                        shutil.rmtree(self.dir("pending") / batch, ignore_errors=True)

    @staticmethod
    def _owner_alive(scratch: Path) -> bool:
        """True while the process that owns `tmp/<owner>/` holds its flock."""
        try:
            fd = os.open(scratch / ".owner", os.O_RDWR)
        except (FileNotFoundError, NotADirectoryError):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
