"""Wrist detector fixtures: trained-on-synthetic detectors, a `wrist_detect` repository and server.

Other suites (web app, PACS gateway, ...) use these to get REAL boxes for a wrist image:

  wrist_ci_models   session; a `WristCIModels` with `.weights = {"joints": Path, "bones": Path}`
                    (Ultralytics `.pt`, yolo11n trained with the `ci` recipe on synthetic wrists),
                    `.losses` per target and `.data` (data.yaml per target). Trained once, cached
                    under `.cache/wrist/ci-<hash>` (hash of the wrist sources, the recipe and the
                    Ultralytics version), so later runs start instantly.
  wrist_repository  session; a read-only model repository with only the wrist models, served
                    score threshold `WRIST_CI_CONF` (0.05)
                    (`wrist_preprocess`, `wrist_joints`, `wrist_bones`, `wrist_postprocess`,
                    `wrist_detect`), cached next to the weights. For MURA + wrist in one server
                    call `export.repository.build_repository(out, tiny=True,
                    wrist_weights=wrist_ci_models.weights)` in your own fixture.
  wrist_triton      session; a real `server.launcher.TritonServer` on `wrist_repository`
                    (`.grpc_url` for `clients.wrist.WristClient`).
  wrist_image       a synthetic wrist radiograph (`SyntheticWrist`: `.image` uint8 HxW, `.boxes`
                    {class: (x1, y1, x2, y2)} ground truth in its pixels), not seen in training.

The CI detectors are small and briefly trained: they find structures on synthetic images (the
serving tests assert they do) but are no clinical model.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CI_IMAGES = 64
CI_SEED = 7
WRIST_CI_CONF = 0.05
"""Served score threshold of the CI repository: lower than the 0.25 default because the CI
detectors are briefly trained; the in-process reference uses the same threshold."""


def _wrist_constants() -> bytes:
    """Only the wrist constants (MURA edits to msk/constants.py must not retrain the detectors)."""
    import msk.constants as c

    return repr(sorted((k, v) for k, v in vars(c).items() if k.startswith("WRIST"))).encode()


def _wrist_key() -> str:
    import ultralytics

    digest = hashlib.sha256(ultralytics.__version__.encode())
    digest.update(f"{CI_IMAGES}:{CI_SEED}".encode() + _wrist_constants())
    for pattern in ("training/wrist_synthetic.py", "training/wrist_labels.py",
                    "training/wrist_preprocess.py", "training/wrist_train.py",
                    "training/recipe_schema.py",
                    "training/recipes/wrist_ci.yaml", "msk/wrist_geometry.py"):
        for path in sorted(ROOT.glob(pattern)):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


@dataclass
class WristCIModels:
    weights: dict[str, Path]
    losses: dict[str, list[float]] = field(default_factory=dict)
    data: dict[str, Path] = field(default_factory=dict)
    root: Path = ROOT


def train_ci_models(root: Path) -> WristCIModels:
    """Synthetic data -> two detectors with the CI recipe (what the fixture caches)."""
    from training.wrist_labels import build_synthetic_datasets
    from training.wrist_train import train_detector

    data = build_synthetic_datasets(root / "data", CI_IMAGES, CI_SEED,
                                    targets=("joints", "bones"), fractions=(0.85, 0.15, 0.0))
    weights, losses = {}, {}
    for target in ("joints", "bones"):
        result = train_detector(data[target], root / "runs", "ci", target=target)
        weights[target] = result.last
        losses[target] = result.losses
    return WristCIModels(weights, losses, dict(data), root)


@pytest.fixture(scope="session")
def wrist_ci_models() -> WristCIModels:
    from training.wrist_train import ultralytics_offline

    ultralytics_offline()
    # resolved: in a git worktree .cache is a link to the shared cache, and the dataset paths
    # written during training are resolved ones (`_train_into` relates the two)
    target = (ROOT / ".cache" / "wrist").resolve() / f"ci-{_wrist_key()}"
    meta = target / "models.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / f"{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)     # parallel sessions wait for one training
        if not meta.exists():
            _train_into(target)
    return _load_models(target)


def _train_into(target: Path) -> None:
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    models = train_ci_models(tmp)
    for data_yaml in models.data.values():   # point each data.yaml at the final folder
        doc = yaml.safe_load(Path(data_yaml).read_text())
        doc["path"] = str(target / Path(doc["path"]).relative_to(tmp))
        Path(data_yaml).write_text(yaml.safe_dump(doc, sort_keys=False))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    rel = {k: str(Path(p).relative_to(tmp)) for k, p in models.weights.items()}
    (target / "models.json").write_text(json.dumps(
        {"weights": rel, "losses": models.losses,
         "data": {k: str(Path(p).relative_to(tmp)) for k, p in models.data.items()}}))


def _load_models(target: Path) -> WristCIModels:
    info = json.loads((target / "models.json").read_text())
    return WristCIModels({k: target / v for k, v in info["weights"].items()}, info["losses"],
                         {k: target / v for k, v in info["data"].items()}, target)


@pytest.fixture(scope="session")
def wrist_repository(wrist_ci_models: WristCIModels) -> Path:
    key = hashlib.sha256()
    key.update(str(WRIST_CI_CONF).encode() + _wrist_constants())
    # The repository vendors all of msk/constants.py (tensor names, opset...) into the
    # post-processing model, so the whole file keys it, not only the WRIST_* values.
    for pattern in ("export/wrist_*.py", "msk/wrist_geometry.py", "export/configs.py",
                    "export/model_specs.py", "export/python_models/*.py", "export/python_step.py",
                    "msk/python_step.py", "msk/graphs/*.py",
                    "msk/constants.py", "msk/__init__.py"):
        for path in sorted(ROOT.glob(pattern)):
            key.update(path.name.encode() + path.read_bytes())
    target = wrist_ci_models.root / f"repository-{key.hexdigest()[:12]}"
    with (target.parent / f"{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / ".complete").exists():
            _write_repository(target, wrist_ci_models)
    return target


def _write_repository(target: Path, wrist_ci_models: WristCIModels) -> None:
    from export.wrist_repository import write_wrist_models

    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    records = write_wrist_models(tmp, wrist_ci_models.weights, version=1, conf=WRIST_CI_CONF)
    (tmp / "wrist_records.json").write_text(json.dumps(records, indent=1))
    (tmp / ".complete").touch()
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


@pytest.fixture(scope="session")
def wrist_triton(wrist_repository: Path) -> Iterator:
    from server.launcher import TritonServer

    with TritonServer(wrist_repository) as server:
        yield server


@pytest.fixture()
def wrist_image():
    from training.wrist_synthetic import make_wrist

    return make_wrist(CI_SEED + 1000, 0, sixteen_bit=False)
