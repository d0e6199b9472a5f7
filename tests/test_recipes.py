"""The training recipes and their one schema (training/recipe_schema.py).

Every committed recipe must read through the schema; the schema's defaults (the only defaults the
training code has) must be the settings the committed recipes state; and a recipe with a
misspelt key must stop `msk train` with a message that names the file and the key, before
anything is written.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from msk.constants import (
    DETECTOR_DEFAULT_IMGSZ,
    MURA_ARCHITECTURES,
    MURA_IMAGE_SIZE,
    MURA_MEMBERS,
    MURA_TRAIN_BATCH_SIZE,
    WRIST_HEIGHT,
)
from msk.wrist_geometry import export_size
from tests.msk_process import run_msk
from training.recipe_schema import (
    RECIPES_DIR,
    MuraRecipe,
    RecipeError,
    WristRecipe,
    parse_recipe,
    read_recipe,
)

MURA_FILES = sorted(RECIPES_DIR.glob("mura_*.yaml"))
WRIST_FILES = sorted(RECIPES_DIR.glob("wrist_*.yaml"))
MEMBER_KEYS = ("name", "member", "architecture", "duplicate_abnormal")
"""What tells the four study members apart; every other MURA setting is the study's."""


def test_every_committed_recipe_is_read_by_the_schema() -> None:
    assert [p.stem for p in MURA_FILES] == [f"mura_{m}" for m in sorted(MURA_MEMBERS)]
    assert {p.stem for p in WRIST_FILES} >= {"wrist_study", "wrist_ci", "wrist_cpu_proof"}
    for path in MURA_FILES:
        assert isinstance(read_recipe("mura", path), MuraRecipe)
    for path in WRIST_FILES:
        assert isinstance(read_recipe("wrist", path), WristRecipe)
    assert read_recipe("mura", "densenet169_a") == read_recipe("mura", "mura_densenet169_a")
    assert read_recipe("wrist", "ci") == read_recipe("wrist", RECIPES_DIR / "wrist_ci.yaml")


@pytest.mark.parametrize("path", MURA_FILES, ids=lambda p: p.stem)
def test_mura_code_defaults_are_the_recipes_settings(path: Path) -> None:
    """Every key a study recipe states has the schema's default as its value, except the keys
    that make the member what it is; so the code and the YAML cannot drift apart."""
    stated = yaml.safe_load(path.read_text())
    recipe = read_recipe("mura", path)
    assert recipe.name == path.stem and recipe.member == path.stem.removeprefix("mura_")
    assert recipe.architecture == MURA_ARCHITECTURES[recipe.member]
    assert recipe.duplicate_abnormal is recipe.member.endswith("_b")
    defaults = MuraRecipe(**{k: getattr(recipe, k) for k in MEMBER_KEYS})
    assert recipe == defaults
    # the recipe states every setting (a reader of the YAML sees the whole study) ...
    assert set(stated) == {f.name for f in dataclasses.fields(MuraRecipe)}
    # ... and the defaults are the shared constants
    assert defaults.image_size == MURA_IMAGE_SIZE
    assert defaults.batch_size == MURA_TRAIN_BATCH_SIZE


def test_wrist_schema_keys_are_ultralytics_train_arguments() -> None:
    from training.wrist_train import ultralytics_offline

    ultralytics_offline()
    from ultralytics.cfg import DEFAULT_CFG_DICT

    fields = {f.name for f in dataclasses.fields(WristRecipe)} - {"name"}
    assert fields <= set(DEFAULT_CFG_DICT), sorted(fields - set(DEFAULT_CFG_DICT))
    # None in the schema means "Ultralytics' default"; the one default we restate is its imgsz
    assert DEFAULT_CFG_DICT["imgsz"] == DETECTOR_DEFAULT_IMGSZ


def test_wrist_study_trains_at_the_served_size() -> None:
    study = read_recipe("wrist", "study")
    assert (study.imgsz, study.rect) == (export_size(WRIST_HEIGHT)[0], True)
    ci = read_recipe("wrist", "ci")
    assert ci.train_args()["imgsz"] == ci.imgsz and "name" not in ci.train_args()
    assert "lr0" not in study.train_args()      # unset: Ultralytics' default applies


@pytest.mark.parametrize(("family", "change", "message"), [
    ("mura", {"learning_rate": 0.1}, "unknown key 'learning_rate'"),
    ("mura", {"augment": {"rotate": 5}}, "unknown key 'augment.rotate'"),
    ("mura", {"lr": "fast"}, "lr: expected float, got 'fast'"),
    ("mura", {"epochs": True}, "epochs: expected int, got True"),
    ("mura", {"architecture": "vgg16"}, "architecture 'vgg16'"),
    ("mura", {"calibration": {"operating_point": "magic"}}, "operating_point 'magic'"),
    ("wrist", {"imgsz": "big"}, "imgsz: expected int or null, got 'big'"),
    ("wrist", {"epoch": 3}, "unknown key 'epoch'"),
])
def test_bad_recipes_are_refused_naming_source_and_key(family: str, change: dict,
                                                       message: str) -> None:
    committed = "mura_densenet169_a.yaml" if family == "mura" else "wrist_ci.yaml"
    base = yaml.safe_load((RECIPES_DIR / committed).read_text())
    with pytest.raises(RecipeError, match="^my.yaml: .*" + message.replace(".", r"\.")):
        parse_recipe(family, base | change, "my.yaml")


def test_exponents_without_a_dot_are_numbers(tmp_path: Path) -> None:
    """YAML 1.1 (PyYAML) reads `1e-4` as a string; a recipe author means the number."""
    path = tmp_path / "r.yaml"
    path.write_text("name: r\nmember: m\narchitecture: tiny\nlr: 1e-4\n"
                    "reduce_lr_on_plateau: {min_lr: 1e-07}\n")
    recipe = read_recipe("mura", path)
    assert (recipe.lr, recipe.reduce_lr_on_plateau.min_lr) == (1e-4, 1e-7)


def test_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    """PyYAML would keep the last of two `lr`s silently; the recipe reader names the key."""
    path = tmp_path / "twice.yaml"
    path.write_text("name: r\nmember: m\narchitecture: tiny\nlr: 0.001\nlr: 0.5\n")
    with pytest.raises(RecipeError, match=r"twice\.yaml: not valid YAML: .*'lr' is given twice"):
        read_recipe("mura", path)


def test_missing_keys_and_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"x\.yaml: missing key\(s\) member, architecture"):
        parse_recipe("mura", {"name": "x"}, "x.yaml")
    with pytest.raises(RecipeError, match="no wrist recipe 'nope'.*committed: .*wrist_ci"):
        read_recipe("wrist", "nope")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(RecipeError, match="list.yaml: a recipe is a YAML mapping"):
        read_recipe("mura", bad)


@pytest.mark.parametrize("family", ["mura", "wrist"])
def test_msk_train_refuses_an_unknown_recipe_key(tmp_path: Path, family: str) -> None:
    """As a user meets it: exit 2, file and key named, no output folder created."""
    source = RECIPES_DIR / (f"{family}_densenet169_a.yaml" if family == "mura" else
                            "wrist_ci.yaml")
    recipe = yaml.safe_load(source.read_text()) | {"warmup_epoch": 3}
    (tmp_path / "typo.yaml").write_text(json.dumps(recipe))     # JSON is valid YAML
    data = ["--data", "nowhere"] if family == "mura" else ["--synthetic", "4"]
    result = run_msk("train", family, *data, "--recipe", "typo.yaml", "--out", "runs/x",
                     cwd=tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "typo.yaml: unknown key 'warmup_epoch'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()
