"""Atomic exports: a new version is built completely beside the repository, then moved in.

An export writes every file of the new version (ONNX artifacts, configs, `manifest.json`) into a
staging folder next to the repository (same file system, so moving is a rename), and only then
moves it into place. Before the first move a journal (`.msk-export-journal.json`) records what
is about to change, with backups of the files it replaces; replacing `manifest.json` is the commit
point. A failure or a kill before that point leaves the repository exactly as it was: a failure
rolls back at once, a kill is rolled back by the next `msk export` (or `msk doctor --repair`),
which reads the journal. A kill after it completes the export instead. Triton never sees a
half-written version folder: version folders appear in the repository only complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import filecmp
import json
import os
import shutil
import uuid
from pathlib import Path

from export.manifest import MANIFEST_NAME, sha256_file, write_json_atomic
from msk.process import pid_alive

JOURNAL_NAME = ".msk-export-journal.json"
LOCK_NAME = ".msk-export.lock"
_STAGING_MARK = ".export-staging-"


class ExportAborted(RuntimeError):
    """The export failed; the repository was left (or put back) as it was."""



def remove_stale_staging(repository: Path) -> list[Path]:
    """Remove staging folders left by exports that were killed (their process is gone)."""
    removed = []
    for folder in Path(repository).parent.glob(f".{Path(repository).name}{_STAGING_MARK}*"):
        pid = folder.name.rsplit("-", 2)[-2]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def recover(repository: Path) -> str | None:
    """Finish or undo an export that was killed while moving its version in.

    Returns what was done ("rolled back" / "completed"), or None when there was nothing to do.
    """
    repository = Path(repository)
    journal_path = repository / JOURNAL_NAME
    if not journal_path.is_file():
        remove_stale_staging(repository)
        return None
    journal = json.loads(journal_path.read_text())
    manifest = repository / MANIFEST_NAME
    committed = manifest.is_file() and sha256_file(manifest) == journal["manifest_sha256"]
    if committed:
        outcome = "completed"
    else:
        _undo(repository, journal)
        outcome = "rolled back"
    journal_path.unlink()
    shutil.rmtree(journal["staging"], ignore_errors=True)
    remove_stale_staging(repository)
    return outcome


def _undo(repository: Path, journal: dict) -> None:
    """Put every path the journal names back as it was before the export started."""
    staging = Path(journal["staging"])
    for rel in journal["moved"]:
        target = repository / rel
        if target.exists():
            shutil.rmtree(target)
    for rel in journal["replaced"]:
        backup = staging / ".backup" / rel
        target = repository / rel
        if backup.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(backup, target)
        elif target.exists():
            target.unlink()
    for rel in sorted(journal["created_dirs"], key=len, reverse=True):
        with contextlib.suppress(OSError):
            (repository / rel).rmdir()


class RepositoryTransaction:
    """Stage new files for `repository`, then move them in at once (see module docstring).

    `stage` mirrors the repository layout: write `stage/<model>/<version>/...`, configs as
    `stage/<model>/config.pbtxt` and the complete new manifest with `write_manifest`, then
    `commit()`. Leaving the `with` block without committing (an exception, Ctrl-C, SIGTERM turned
    into SystemExit) discards the stage and touches nothing in the repository.
    """

    def __init__(self, repository: Path) -> None:
        self.repository = Path(repository).absolute()
        self.repository.mkdir(parents=True, exist_ok=True)
        self._lock = (self.repository / LOCK_NAME).open("a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise ExportAborted(f"another export is writing to {self.repository}; "
                                "wait for it to finish") from None
        recover(self.repository)
        name = f".{self.repository.name}{_STAGING_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.stage = self.repository.parent / name
        self.stage.mkdir()
        self.committed = False

    def write_manifest(self, manifest: dict) -> None:
        write_json_atomic(self.stage / MANIFEST_NAME, manifest)

    def _changes(self) -> tuple[list[str], list[str]]:
        """(version folders to move in, files to replace): only what differs from the repository."""
        moved, replaced = [], []
        for model_dir in sorted(p for p in self.stage.iterdir() if p.is_dir()):
            if model_dir.name.startswith("."):
                continue
            for entry in sorted(model_dir.iterdir()):
                rel = f"{model_dir.name}/{entry.name}"
                if entry.is_dir():
                    if (self.repository / rel).exists():
                        raise ExportAborted(f"{self.repository / rel} already exists; refusing to "
                                            "overwrite a served version")
                    moved.append(rel)
                elif not (self.repository / rel).is_file() or not filecmp.cmp(
                        entry, self.repository / rel, shallow=False):
                    replaced.append(rel)
        if (self.stage / MANIFEST_NAME).is_file():
            replaced.append(MANIFEST_NAME)       # last: replacing it is the commit point
        return moved, replaced

    def commit(self) -> None:
        moved, replaced = self._changes()
        created = sorted({rel.split("/")[0] for rel in moved + replaced if "/" in rel}
                         - {p.name for p in self.repository.iterdir()})
        for rel in replaced:
            if (self.repository / rel).is_file():
                backup = self.stage / ".backup" / rel
                backup.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.repository / rel, backup)
        manifest_sha = (sha256_file(self.stage / MANIFEST_NAME)
                        if MANIFEST_NAME in replaced else None)
        journal = {"staging": str(self.stage), "moved": moved, "replaced": replaced,
                    "created_dirs": created, "manifest_sha256": manifest_sha}
        write_json_atomic(self.repository / JOURNAL_NAME, journal)
        try:
            for rel in moved + replaced:
                (self.repository / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.stage / rel, self.repository / rel)
        except BaseException:  # why: even Ctrl-C / SIGTERM mid-move must roll back, re-raised
            _undo(self.repository, journal)
            (self.repository / JOURNAL_NAME).unlink()
            raise
        (self.repository / JOURNAL_NAME).unlink()
        self.committed = True

    def __enter__(self) -> RepositoryTransaction:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)
        self._lock.close()
