"""`model_repository/manifest.json`: what is in the repository, where it came from, its SHA-256.

One record per artifact (model, version, path, sha256, bytes) plus provenance per version (weights
kind, recipe, dataset fingerprint, metrics, commit). The SHA-256s also travel in every MURA response
(`PROVENANCE`), so a result can always be traced to the exact files that produced it.

The manifest is written only by `export.staging.RepositoryTransaction` as the last step of an
export (its commit point), so a manifest always describes complete versions.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

MANIFEST_NAME = "manifest.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_record(root: Path, model: str, version: int, path: Path) -> dict:
    """One manifest row for the file `path` (a path as given, absolute or relative to the working
    directory, lying inside `root`); the row stores it relative to `root`."""
    full = Path(path).resolve()
    return {"model": model, "version": int(version),
            "path": full.relative_to(Path(root).resolve()).as_posix(),
            "sha256": sha256_file(full), "bytes": full.stat().st_size}


def load_manifest(repository: Path) -> dict:
    path = Path(repository) / MANIFEST_NAME
    if path.is_file():
        return json.loads(path.read_text())
    return {"artifacts": [], "versions": {}}


def merged_manifest(manifest: dict, records: list[dict], provenance: dict[str, dict]) -> dict:
    """`manifest` with new artifact records and per-"model/version" provenance merged in."""
    merged = {"artifacts": list(manifest.get("artifacts", [])),
              "versions": dict(manifest.get("versions", {}))}
    keys = {(r["model"], r["version"], r["path"]) for r in records}
    merged["artifacts"] = [
        r for r in merged["artifacts"] if (r["model"], r["version"], r["path"]) not in keys
    ] + records
    merged["artifacts"].sort(key=lambda r: (r["model"], r["version"], r["path"]))
    merged["versions"].update(provenance)
    merged["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
    return merged


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON so that a reader (or a kill) never sees a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
