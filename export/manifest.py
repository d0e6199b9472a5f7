"""`model_repository/manifest.json`: what is in the repository, where it came from, its SHA-256.

One record per artifact (model, version, path, sha256, bytes) plus provenance per version (weights
kind, recipe, dataset fingerprint, metrics, commit). The SHA-256s also travel in every MURA response
(`PROVENANCE`), so a result can always be traced to the exact files that produced it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

MANIFEST_NAME = "manifest.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_record(repository: Path, model: str, version: int, path: Path) -> dict:
    """One manifest row; `path` is absolute (inside `repository`) or relative to it."""
    full = Path(path) if Path(path).is_absolute() else Path(repository) / path
    return {"model": model, "version": int(version),
            "path": str(full.relative_to(repository)),
            "sha256": sha256_file(full), "bytes": full.stat().st_size}


def current_commit() -> str:
    """The source commit, or "unknown" outside a git checkout (recorded, never required)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10, check=False)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def load_manifest(repository: Path) -> dict:
    path = repository / MANIFEST_NAME
    if path.is_file():
        return json.loads(path.read_text())
    return {"artifacts": [], "versions": {}}


def update_manifest(repository: Path, records: list[dict], provenance: dict[str, dict]) -> dict:
    """Merge new artifact records and per-"model/version" provenance into the manifest."""
    manifest = load_manifest(repository)
    keys = {(r["model"], r["version"], r["path"]) for r in records}
    manifest["artifacts"] = [
        r for r in manifest["artifacts"] if (r["model"], r["version"], r["path"]) not in keys
    ] + records
    manifest["artifacts"].sort(key=lambda r: (r["model"], r["version"], r["path"]))
    manifest["versions"].update(provenance)
    manifest["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
    (repository / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
