"""Train the wrist detectors with Ultralytics, offline-safe.

`ultralytics_offline()` is the one place that makes Ultralytics safe on a machine without internet
(and in CI): it must run before `ultralytics` is imported, and every wrist module that touches
Ultralytics calls it first. What it sets (each item was seen reaching for the network otherwise
with Ultralytics 8.4):
  YOLO_OFFLINE=1, YOLO_AUTOINSTALL=0 (no run-time pip installs), YOLO_CONFIG_DIR (writable),
  MPLBACKEND=Agg + MPLCONFIGDIR, Arial.ttf / Arial.Unicode.ttf in the config dir (copied from
  matplotlib's bundled DejaVuSans: the font check downloads otherwise), settings sync=False,
  hub off; models are built from YAML (`yolo11n.yaml`; a bare `*.pt` name would download),
  `pretrained=False`, `amp=False` (the AMP check downloads a model), absolute dataset paths.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from msk.constants import DETECTOR_DEFAULT_IMGSZ
from training.recipe_schema import WristRecipe, read_recipe

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    root = os.environ.get("MSK_CACHE_DIR")
    return Path(root) if root else REPO_ROOT / ".cache"


def ultralytics_offline(config_dir: Path | None = None) -> Path:
    """Configure the environment for offline Ultralytics; returns the config dir. Idempotent."""
    config_dir = Path(config_dir or os.environ.get("YOLO_CONFIG_DIR")
                      or cache_dir() / "ultralytics")
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("MPLCONFIGDIR", str(config_dir / "matplotlib"))
    fonts = config_dir / "Ultralytics"
    fonts.mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (fonts / name).exists():
            import matplotlib

            src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
            shutil.copy2(src, fonts / name)
    from ultralytics.utils import SETTINGS

    # no telemetry and no logger integrations (they may reach for the network when installed)
    off = {k: False for k in ("sync", "hub", "clearml", "comet", "dvc", "mlflow", "neptune",
                              "raytune", "tensorboard", "wandb") if SETTINGS.get(k)}
    if off:
        SETTINGS.update(off)
    return config_dir


def load_recipe(recipe: str | Path) -> WristRecipe:
    """A recipe by name (`training/recipes/wrist_<name>.yaml`, e.g. 'study', 'cpu_proof', 'ci')
    or by path, validated against the wrist schema (`training.recipe_schema`)."""
    return read_recipe("wrist", recipe)


def trained_imgsz(model) -> int:
    """The `imgsz` a loaded Ultralytics model was trained at (the long side when a pair), or
    Ultralytics' own default when its checkpoint does not say."""
    imgsz = ((getattr(model, "ckpt", None) or {}).get("train_args", {})
             .get("imgsz", DETECTOR_DEFAULT_IMGSZ))
    if isinstance(imgsz, list | tuple):
        imgsz = max(imgsz)
    return int(imgsz)


@dataclass
class TrainResult:
    target: str
    weights: Path                 # best.pt
    last: Path
    run_dir: Path
    imgsz: int
    losses: list[float] = field(default_factory=list)   # train box+cls+dfl loss per epoch
    metrics: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"target": self.target, "weights": str(self.weights), "run_dir": str(self.run_dir),
                "imgsz": self.imgsz, "losses": self.losses, "metrics": self.metrics}


def read_losses(results_csv: Path) -> list[float]:
    if not results_csv.exists():
        return []
    with results_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for row in rows:
        row = {k.strip(): v for k, v in row.items()}
        out.append(sum(float(row[k]) for k in ("train/box_loss", "train/cls_loss",
                                                 "train/dfl_loss")))
    return out


def train_detector(data_yaml: Path, out_dir: Path, recipe: WristRecipe | str | Path = "ci", *,
                   target: str = "joints", weights: Path | None = None,
                   overrides: dict | None = None) -> TrainResult:
    """Train one detector (joints, bones or a single structure) on an Ultralytics data.yaml.
    `overrides` replace recipe fields (the command line's --epochs, --imgsz, ...)."""
    ultralytics_offline()
    import torch
    from ultralytics import YOLO

    cfg = recipe if isinstance(recipe, WristRecipe) else load_recipe(recipe)
    cfg = dataclasses.replace(cfg, **(overrides or {}))
    if torch.get_num_threads() > (os.cpu_count() or 2):
        torch.set_num_threads(os.cpu_count() or 2)
    source = str(weights) if weights else cfg.model
    if source.endswith(".pt") and not Path(source).exists():
        raise FileNotFoundError(f"weights file {source} not found (nothing is downloaded)")
    model = YOLO(source)
    args = cfg.train_args()
    device = str(args.get("device", "cpu"))
    if device != "cpu" and not torch.cuda.is_available():
        args["device"] = "cpu"
    out_dir = Path(out_dir).resolve()
    model.train(data=str(Path(data_yaml).resolve()), project=str(out_dir), name=target,
                exist_ok=True, pretrained=bool(weights), amp=False, plots=False, verbose=False,
                **args)
    run_dir = out_dir / target
    metrics = {}
    trainer_metrics = getattr(model.trainer, "metrics", None) or {}
    for k, v in trainer_metrics.items():
        try:
            metrics[k] = float(v)
        except (TypeError, ValueError):
            continue
    best = run_dir / "weights" / "best.pt"
    last = run_dir / "weights" / "last.pt"
    return TrainResult(target, best if best.exists() else last, last, run_dir,
                       cfg.imgsz or DETECTOR_DEFAULT_IMGSZ, read_losses(run_dir / "results.csv"),
                       metrics)
