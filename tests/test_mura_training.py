"""MURA training, short CI version: the loss falls, resume is exact, and a trained checkpoint
goes through `build_repository` into the real tritonserver and is served with the probabilities
PyTorch computes from the same checkpoint (plus its operating points as the client's call).

The CI runs use the tiny stand-in backbone (same head, same CAM contract) so that they finish in
seconds on two shared cores; `bench/proof_mura.py` (and the slow test at the bottom) trains the
real DenseNet-169 / ResNet-101 members to a study-level AUROC >= 0.90.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from msk.constants import MURA_BODY_PARTS, MURA_MEMBERS, MURA_TINY_ARCHITECTURE
from training.mura_data import load_splits
from training.mura_synthetic import SyntheticSpec, generate
from training.mura_train import load_recipe, train_member
from training.recipe_schema import AugmentSpec, MuraRecipe

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("mura_train")
    generate(root, SyntheticSpec(train_patients=40, valid_patients=12, min_side=96, max_side=128,
                                 seed=11))
    return load_splits(root, test_fraction=0.25, split_seed=0)


def _recipe(member: str, **overrides) -> MuraRecipe:
    fast = {"architecture": MURA_TINY_ARCHITECTURE, "image_size": IMAGE_SIZE, "lr": 3e-3,
            "num_workers": 0, "epochs": 4}
    return dataclasses.replace(load_recipe(f"mura_{member}"), **(fast | overrides))


def test_recipes_carry_the_study_settings() -> None:
    for member in MURA_MEMBERS:
        r = load_recipe(f"mura_{member}")
        assert (r.member, r.image_size, r.batch_size, r.lr) == (member, 320, 8, 1e-4)
        assert r.epochs <= 20 and r.optimizer == "adam"
        assert r.augment == AugmentSpec(rotate_deg=20, shift=0.2, zoom=0.2, hflip=True)
        assert r.duplicate_abnormal is member.endswith("_b")
        assert r.reduce_lr_on_plateau.factor == 0.1 and r.early_stopping.patience > 0


def test_loss_falls_and_checkpoint_has_the_export_format(tmp_path: Path, splits: dict) -> None:
    losses: list[float] = []
    result = train_member(_recipe("densenet169_a"), splits["train"], splits["valid"], tmp_path,
                          device="cpu", cache=True, progress=False,
                          on_step=lambda step, loss: losses.append(loss))
    quarter = max(len(losses) // 4, 2)
    assert np.mean(losses[-quarter:]) < 0.8 * np.mean(losses[:quarter]), losses
    checkpoint = torch.load(result.checkpoint, weights_only=False)
    for key in ("member", "architecture", "state_dict", "image_size", "recipe",
                "dataset_fingerprint", "metrics", "temperature", "operating_points", "commit"):
        assert key in checkpoint, key
    assert checkpoint["member"] == "densenet169_a" and checkpoint["image_size"] == IMAGE_SIZE
    assert checkpoint["temperature"] > 0
    assert set(MURA_BODY_PARTS) <= set(checkpoint["operating_points"])
    assert {"ece_before", "ece_after", "val_study_auroc", "class_weights"} <= set(
        checkpoint["metrics"])
    rows = list(csv.DictReader((tmp_path / "metrics.csv").read_text().splitlines()))
    assert len(rows) == len(result.history) and set(rows[0]) >= {"epoch", "train_loss",
                                                                  "val_loss", "val_auroc", "lr"}


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_gives_identical_weights(tmp_path: Path, splits: dict) -> None:
    recipe = _recipe("densenet169_b", epochs=3)
    kwargs = dict(device="cpu", cache=True, progress=False, max_steps_per_epoch=3)
    straight = train_member(recipe, splits["train"], splits["valid"], tmp_path / "a", **kwargs)

    def interrupt(step: int, loss: float) -> None:
        if step == 5:  # in the middle of epoch 2
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train_member(recipe, splits["train"], splits["valid"], tmp_path / "b", on_step=interrupt,
                     **kwargs)
    resumed = train_member(recipe, splits["train"], splits["valid"], tmp_path / "b", **kwargs)
    a = torch.load(straight.checkpoint, weights_only=False)
    b = torch.load(resumed.checkpoint, weights_only=False)
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    assert a["temperature"] == b["temperature"]
    assert [h["val_loss"] for h in straight.history] == [h["val_loss"] for h in resumed.history]
    with pytest.raises(ValueError, match="different recipe"):
        train_member(_recipe("densenet169_b", lr=1e-2), splits["train"], splits["valid"],
                     tmp_path / "b", **kwargs)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, splits: dict) -> dict:
    """`msk train mura` + `msk evaluate mura` on the synthetic set, tiny backbones via recipes."""
    from msk.cli import main

    work = tmp_path_factory.mktemp("mura_cli")
    data = splits["train"][0].path.parents[5]  # .../MURA-v1.1/train/XR_*/patient*/study*/img
    recipes = []
    for member in MURA_MEMBERS:
        path = work / f"{member}.yaml"
        path.write_text(json.dumps(_recipe(member, epochs=1).to_dict()))  # JSON is valid YAML
        recipes += ["--recipe", str(path)]
    out = work / "run"
    common = ["--data", str(data), "--test-fraction", "0.25", "--device", "cpu"]
    train_args = ["train", "mura", *common, *recipes, "--out", str(out), "--cache",
                  "--no-progress"]
    eval_args = ["evaluate", "mura", *common, "--checkpoints", str(out), "--out",
                 str(work / "report"), "--bootstrap", "50"]
    return {"out": out, "report": work / "report", "train_rc": main(train_args),
            "eval_rc": main(eval_args), "data": data}


def test_cli_trains_calibrates_and_reports(cli_run: dict, capsys) -> None:
    from training.mura_evaluate import CALIBRATION_FILE

    assert cli_run["train_rc"] == 0 and cli_run["eval_rc"] == 0
    out, report = cli_run["out"], cli_run["report"]
    for member in MURA_MEMBERS:
        assert (out / f"{member}.pt").is_file()
        assert (out / member / "metrics.csv").is_file() and (out / member / "last.pt").is_file()
    points = json.loads((out / CALIBRATION_FILE).read_text())["operating_points"]
    assert set(MURA_BODY_PARTS) <= set(points)
    text = (report / "report.md").read_text()
    for needle in ("| ensemble | study |", "ECE before", "per body part", "roc.png"):
        assert needle in text, needle
    assert (report / "roc.png").stat().st_size > 1000
    assert (report / "calibration.png").stat().st_size > 1000
    numbers = json.loads((report / "report.json").read_text())
    ensemble = numbers["models"]["ensemble"]["study"]["overall"]
    assert ensemble["auroc"]["low"] <= ensemble["auroc"]["value"] <= ensemble["auroc"]["high"]
    assert numbers["meta"]["split"] == "test"


def test_cli_reports_bad_data_clearly(tmp_path: Path, capsys) -> None:
    from msk.cli import main

    assert main(["train", "mura", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no MURA-v1.1/ folder" in capsys.readouterr().err


def test_trained_checkpoints_served_by_triton_match_pytorch(cli_run: dict, splits: dict,
                                                            repository_copy: Path) -> None:
    from clients.mura import MuraClient
    from export.manifest import load_manifest
    from export.repository import build_repository
    from msk.imaging import load_grayscale
    from server.launcher import TritonServer
    from training.mura_evaluate import CALIBRATION_FILE
    from training.mura_models import load_checkpoint
    from training.mura_preprocess import preprocess_mura

    out = cli_run["out"]
    checkpoints = {m: out / f"{m}.pt" for m in MURA_MEMBERS}
    points = json.loads((out / CALIBRATION_FILE).read_text())["operating_points"]
    version = build_repository(repository_copy, checkpoints=checkpoints, operating_points=points)
    provenance = load_manifest(repository_copy)["versions"][f"mura_ensemble/{version}"]
    for member in MURA_MEMBERS:
        info = provenance["members"][member]
        meta = torch.load(checkpoints[member], weights_only=False)
        assert info["dataset_fingerprint"] == meta["dataset_fingerprint"]
        assert info["recipe"] == meta["recipe"]["name"]
        assert info["temperature"] == pytest.approx(meta["temperature"])
        assert len(info["sha256"]) == 64

    test = splits["test"][:6]
    expected: dict[str, list[float]] = {m: [] for m in MURA_MEMBERS}
    with torch.no_grad():
        for member in MURA_MEMBERS:
            model, meta = load_checkpoint(checkpoints[member])
            for record in test:
                pixels = torch.from_numpy(preprocess_mura(load_grayscale(record.path)))[None]
                expected[member].append(
                    torch.sigmoid(model(pixels) / meta["temperature"]).item())
    with TritonServer(repository_copy) as server, MuraClient(server.grpc_url) as client:
        results = client.score([r.path for r in test], body_parts=[r.body_part for r in test],
                               heatmaps=False)
    for i, (record, result) in enumerate(zip(test, results, strict=True)):
        assert result.error is None, result.error
        assert result.versions["pipeline"] == str(version) and result.weights == "trained"
        for member in MURA_MEMBERS:
            assert result.members[member] == pytest.approx(expected[member][i], abs=1e-5)
        mean = float(np.mean([expected[m][i] for m in MURA_MEMBERS]))
        assert result.probability == pytest.approx(mean, abs=1e-5)
        assert result.threshold == pytest.approx(points[record.body_part])
        assert result.abnormal == (result.probability >= result.threshold)


@pytest.mark.slow
def test_proof_reaches_the_auroc_target(tmp_path: Path) -> None:
    """The full learnable proof (`make proof-mura`): ~10+ minutes on two cores."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "proof_mura.py"), "--out",
                           str(tmp_path / "proof")], capture_output=True, text=True, timeout=3600)
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("proof-mura: auroc=")
    assert done.returncode == 0, done.stdout[-3000:]
    assert float(last.split("=")[1]) >= 0.90
