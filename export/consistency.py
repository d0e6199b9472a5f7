"""Is a model repository coherent? Checked by `msk export` (refuses), `msk serve` and `msk doctor`.

A repository is coherent when every model of a pipeline has the same set of version folders (one
export = one version number for all of its models), every version folder is described by
`manifest.json`, every manifest record's file exists with its recorded SHA-256, and no interrupted
export is pending. A lone version of one member (what a failed non-atomic export used to leave)
would otherwise be served beside nothing it belongs with.
"""

from __future__ import annotations

from pathlib import Path

from export.manifest import load_manifest, sha256_file
from export.model_specs import mura_specs, study_detector_input, wrist_specs
from export.staging import JOURNAL_NAME

MURA_MODELS = tuple(spec.name for spec in mura_specs())
WRIST_MODELS = tuple(spec.name for spec in wrist_specs(*study_detector_input()))
"""Each pipeline's models, read from the one description (export/model_specs.py): a model added
there is checked here without anyone listing it twice."""
PIPELINES = {"MURA": MURA_MODELS, "wrist": WRIST_MODELS}


def existing_versions(repository: Path, model: str) -> list[int]:
    folder = Path(repository) / model
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def _span(versions: list[int]) -> str:
    return ", ".join(map(str, versions)) if versions else "none"


def repository_problems(repository: Path, *, verify_hashes: bool = True) -> list[str]:
    """Every reason the repository is not coherent (empty list = coherent)."""
    repository = Path(repository)
    problems: list[str] = []
    if (repository / JOURNAL_NAME).is_file():
        problems.append("an export was interrupted while moving its version in "
                        "(run `msk export` or `msk doctor --repair` to roll it back)")
    for pipeline, models in PIPELINES.items():
        versions = {m: existing_versions(repository, m) for m in models}
        if not any(versions.values()):
            continue
        if len({tuple(v) for v in versions.values()}) > 1:
            detail = "; ".join(f"{m}: {_span(v)}" for m, v in versions.items())
            problems.append(f"the {pipeline} models do not share one set of versions ({detail})")
    manifest = load_manifest(repository)
    recorded = {(r["model"], int(r["version"])) for r in manifest.get("artifacts", [])}
    recorded |= {(key.split("/")[0], int(key.split("/")[1]))        # ensembles: no artifacts
                 for key in manifest.get("versions", {})}
    for models in PIPELINES.values():
        for model in models:
            for version in existing_versions(repository, model):
                if (model, version) not in recorded:
                    problems.append(f"{model}/{version} is not described by manifest.json "
                                    "(left by an unfinished export?)")
    for record in manifest.get("artifacts", []):
        path = repository / record["path"]
        if not path.is_file():
            problems.append(f"{record['path']} is in manifest.json but missing")
        elif verify_hashes and sha256_file(path) != record["sha256"]:
            problems.append(f"{record['path']} does not match its SHA-256 in manifest.json")
    return problems


def describe_repository(repository: Path) -> dict[str, list[int]]:
    """pipeline -> its version numbers (versions present for every model of the pipeline)."""
    out = {}
    for pipeline, models in PIPELINES.items():
        sets = [set(existing_versions(repository, m)) for m in models]
        out[pipeline] = sorted(set.intersection(*sets))
    return out
