"""The one schema of the training recipes (training/recipes/*.yaml), one dataclass per family.

Why a schema: a recipe is the record of how a model was trained, so a misspelt key
(`learning_rate:` for `lr:`) must stop the run instead of silently training with a default. Every
recipe, by name or by path, for `msk train`, the benchmarks and the tests, is read by `read_recipe`
here: unknown keys and wrongly typed values are a `RecipeError` naming the file and the key.

The field defaults ARE the code defaults (the training loops read nothing else), and for MURA they
are the seed study's settings, so a study recipe only states what makes its member different;
tests/test_recipes.py checks that every committed recipe agrees with them.
Import-light (yaml + `msk.constants`): `msk train --help` and the tests read recipes without torch.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from msk.constants import (
    MURA_ARCHITECTURES,
    MURA_IMAGE_SIZE,
    MURA_TINY_ARCHITECTURE,
    MURA_TRAIN_BATCH_SIZE,
)

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
"""The committed recipes: `mura_<member>.yaml` and `wrist_<name>.yaml`."""

OPERATING_POINT_METHODS = ("youden", "sensitivity")
"""How per-body-part thresholds are chosen (`training.mura_calibration.choose_threshold`)."""
DEFAULT_OPERATING_POINT = "youden"
DEFAULT_TARGET_SENSITIVITY = 0.9
"""The study recipes' calibration, also the defaults of `msk evaluate mura --fit-operating-points`
and of the calibration after `msk train mura` trained all four members."""
PREDICT_BATCH_SIZE = 16
"""Inference batch when a trained member is calibrated or evaluated (`msk evaluate mura
--batch-size`); without gradients twice the training batch fits where training did."""

MURA_RECIPE_ARCHITECTURES = (*sorted(set(MURA_ARCHITECTURES.values())), MURA_TINY_ARCHITECTURE)
"""Architectures a MURA recipe may name (`training.mura_models.build_backbone` builds them)."""


class RecipeError(ValueError):
    """A recipe that cannot be used: missing file, unknown key, wrong type or value."""


# --------------------------------------------------------------------------------------------
# MURA ensemble members
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlateauSpec:
    """ReduceLROnPlateau on the validation loss: the study's x0.1 after one flat epoch."""

    factor: float = 0.1
    patience: int = 1
    min_lr: float = 1.0e-7


@dataclass(frozen=True)
class EarlyStoppingSpec:
    """Stop when the validation loss has not improved by `min_delta` for `patience` epochs."""

    patience: int = 3
    min_delta: float = 0.0


@dataclass(frozen=True)
class AugmentSpec:
    """Ranges from the study: rotate ±20°, shift 20 % of the side, zoom ±20 %, horizontal flip.
    `enabled: false` trains without augmentation."""

    rotate_deg: float = 20.0
    shift: float = 0.2
    zoom: float = 0.2
    hflip: bool = True
    enabled: bool = True


@dataclass(frozen=True)
class CalibrationSpec:
    """After training: temperature scaling, then per-body-part operating points."""

    temperature: bool = True
    operating_point: str = DEFAULT_OPERATING_POINT
    target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY

    def __post_init__(self) -> None:
        if self.operating_point not in OPERATING_POINT_METHODS:
            raise RecipeError(f"calibration.operating_point {self.operating_point!r}: expected "
                              f"one of {', '.join(OPERATING_POINT_METHODS)}")


@dataclass(frozen=True)
class MuraRecipe:
    """One MURA ensemble member's training settings (`msk train mura --recipe`)."""

    name: str
    member: str
    architecture: str
    image_size: int = MURA_IMAGE_SIZE
    batch_size: int = MURA_TRAIN_BATCH_SIZE
    optimizer: str = "adam"
    lr: float = 1.0e-4
    weight_decay: float = 0.0
    epochs: int = 20
    dropout: float = 0.2
    reduce_lr_on_plateau: PlateauSpec = field(default_factory=PlateauSpec)
    early_stopping: EarlyStoppingSpec = field(default_factory=EarlyStoppingSpec)
    class_weights: str = "inverse_frequency"
    duplicate_abnormal: bool = False
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    seed: int = 0
    num_workers: int = 4
    amp: bool = True
    channels_last: bool = True

    def __post_init__(self) -> None:
        if self.architecture not in MURA_RECIPE_ARCHITECTURES:
            raise RecipeError(f"architecture {self.architecture!r}: expected one of "
                              f"{', '.join(MURA_RECIPE_ARCHITECTURES)}")
        # the training loop implements exactly these; other values would be silently ignored
        if self.optimizer != "adam":
            raise RecipeError(f"optimizer {self.optimizer!r}: only 'adam' is implemented")
        if self.class_weights != "inverse_frequency":
            raise RecipeError(f"class_weights {self.class_weights!r}: only 'inverse_frequency' "
                              "is implemented")
        for key in ("image_size", "batch_size", "epochs"):
            if getattr(self, key) < 1:
                raise RecipeError(f"{key} must be at least 1, not {getattr(self, key)}")

    def to_dict(self) -> dict:
        """Plain data, stored in checkpoints (`recipe`) and compared on resume."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# Wrist detectors (Ultralytics)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WristRecipe:
    """One wrist detector's training settings (`msk train wrist --recipe`).

    Every field but `name` and `model` is an Ultralytics `train()` argument; None (the default)
    leaves Ultralytics' own default in place, so these defaults are Ultralytics' defaults."""

    name: str
    model: str = "yolo11n.yaml"   # architecture from Ultralytics' bundled YAML, or a local .pt
    epochs: int | None = None
    batch: int | None = None
    imgsz: int | None = None
    rect: bool | None = None
    device: str | int | None = None
    workers: int | None = None
    cache: bool | str | None = None
    seed: int | None = None
    optimizer: str | None = None
    lr0: float | None = None
    lrf: float | None = None
    warmup_epochs: float | None = None
    patience: int | None = None
    mosaic: float | None = None
    fliplr: float | None = None
    flipud: float | None = None
    hsv_h: float | None = None
    hsv_s: float | None = None
    hsv_v: float | None = None
    scale: float | None = None
    translate: float | None = None
    degrees: float | None = None
    time: float | None = None
    close_mosaic: int | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    cos_lr: bool | None = None
    val: bool | None = None
    nbs: int | None = None
    box: float | None = None
    cls: float | None = None
    dfl: float | None = None
    deterministic: bool | None = None

    def train_args(self) -> dict[str, Any]:
        """The keyword arguments for Ultralytics' `train()`: the fields the recipe sets."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("name", "model") and getattr(self, f.name) is not None}


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
FAMILIES: dict[str, type] = {"mura": MuraRecipe, "wrist": WristRecipe}
R = TypeVar("R")


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _check_value(value: Any, hint: Any, where: str) -> Any:
    """`value` converted to `hint` (int -> float is the only widening), else a RecipeError."""
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise RecipeError(f"{where}: expected a mapping of {hint.__name__} fields, "
                              f"got {value!r}")
        return _build(hint, value, f"{where}.")
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is not type(None):
                try:
                    return _check_value(value, option, where)
                except RecipeError:
                    continue
        names = " or ".join("null" if o is type(None) else o.__name__ for o in options)
        raise RecipeError(f"{where}: expected {names}, got {value!r}")
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        # PyYAML reads YAML 1.1, where `1e-4` (no dot) is a string, not a float
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (bool, str) and isinstance(value, hint):
        return value
    raise RecipeError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _build(cls: type[R], data: Mapping, prefix: str = "") -> R:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in hints]
    if unknown:
        raise RecipeError(f"unknown key {prefix + str(unknown[0])!r} (allowed: "
                          f"{', '.join(names)})")
    values = {k: _check_value(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise RecipeError(f"missing key(s) {', '.join(prefix + m for m in missing)}")
    return cls(**values)


def parse_recipe(family: str, data: Any, source: str) -> MuraRecipe | WristRecipe:
    """Validate already-loaded recipe data; errors name `source` (a file, or what gave the data)."""
    if not isinstance(data, Mapping):
        raise RecipeError(f"{source}: a recipe is a YAML mapping of keys to values, got "
                          f"{type(data).__name__}")
    try:
        return _build(FAMILIES[family], data)
    except RecipeError as exc:
        raise RecipeError(f"{source}: {exc}") from None


def recipe_path(family: str, name_or_path: str | Path) -> Path:
    """A recipe file: an existing path, or `training/recipes/<family>_<name>.yaml` where the
    name may carry the family prefix already (`mura_densenet169_a`, `ci`, `wrist_ci`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = str(name_or_path).removeprefix(f"{family}_")
    candidate = RECIPES_DIR / f"{family}_{stem}.yaml"
    if candidate.is_file():
        return candidate
    names = sorted(p.stem for p in RECIPES_DIR.glob(f"{family}_*.yaml"))
    raise RecipeError(f"no {family} recipe {str(name_or_path)!r} (neither a file nor "
                      f"{candidate}); committed: {', '.join(names)}")


def _strict_yaml_loader():
    """PyYAML's SafeLoader, except that a key given twice in one mapping is an error: PyYAML
    silently keeps the last one, so a recipe could say `lr` twice and train with the other."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: set = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def read_recipe(family: str, name_or_path: str | Path) -> MuraRecipe | WristRecipe:
    """The one reader of recipe files: find, parse YAML, validate against the family's schema."""
    import yaml

    path = recipe_path(family, name_or_path)
    try:
        data = yaml.load(path.read_text(), Loader=_strict_yaml_loader())  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if family == "wrist" and isinstance(data, dict):
        data = {"name": path.stem, **data}
    return parse_recipe(family, data, str(path))
