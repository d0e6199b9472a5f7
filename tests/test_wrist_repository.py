"""Repository writing: versions, GPU/CPU placement, class checks, `msk train wrist` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from export.wrist_repository import write_wrist_models

ROOT = Path(__file__).resolve().parent.parent


def _onnx(repo: Path, model: str) -> Path:
    return sorted((repo / model).glob("[0-9]*/model.onnx"))[-1]


def test_new_versions_and_placement(wrist_repository: Path, tmp_path: Path) -> None:
    onnx = {"joints": _onnx(wrist_repository, "wrist_joints"),
            "bones": _onnx(wrist_repository, "wrist_bones")}
    first = write_wrist_models(tmp_path, onnx, version=1)
    second = write_wrist_models(tmp_path, onnx, version=2, target="gpu")
    assert {r["model"]: r["version"] for r in first}["wrist_joints"] == 1
    assert {r["model"]: r["version"] for r in second}["wrist_joints"] == 2
    assert (tmp_path / "wrist_joints" / "1" / "model.onnx").exists()      # old version stays
    for r in second:
        assert (tmp_path / r["path"]).exists() and len(r["sha256"]) == 64
    gpu = (tmp_path / "wrist_preprocess" / "config.pbtxt").read_text()
    assert "KIND_GPU" in gpu and "num_versions: 2" in gpu
    assert "KIND_GPU" in (tmp_path / "wrist_joints" / "config.pbtxt").read_text()
    assert "KIND_CPU" in (tmp_path / "wrist_postprocess" / "config.pbtxt").read_text()
    cpu = (wrist_repository / "wrist_preprocess" / "config.pbtxt").read_text()
    assert "KIND_CPU" in cpu          # the cpu target means CPU, for both families
    ensemble = (tmp_path / "wrist_detect" / "config.pbtxt").read_text()
    assert ensemble.count("model_version: -1") == 4
    params = json.loads((tmp_path / "wrist_postprocess" / "2" / "params.json").read_text())
    assert params["provenance"]["detectors"]["wrist_joints"]["version"] == "2"
    post = tmp_path / "wrist_postprocess" / "2"
    record = {r["model"]: r for r in second}["wrist_postprocess"]
    assert params["provenance"]["postprocess"]["sha256"] == record["sha256"]   # of model.py
    assert (post / "_vendored" / "msk" / "python_step.py").read_bytes() == (
        ROOT / "msk" / "python_step.py").read_bytes()


def test_detector_classes_are_checked(wrist_repository: Path, tmp_path: Path) -> None:
    swapped = {"joints": _onnx(wrist_repository, "wrist_bones"),
               "bones": _onnx(wrist_repository, "wrist_joints")}
    with pytest.raises(ValueError, match="joints detector's classes are"):
        write_wrist_models(tmp_path, swapped, version=1)
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        write_wrist_models(tmp_path, version=1, weights={"joints": tmp_path / "nothing.pt",
                                      "bones": swapped["joints"]})


def test_msk_train_wrist_single_structure(tmp_path: Path) -> None:
    """`msk train wrist` from labels on disk: import, single-structure dataset, training."""
    from training.wrist_labels import write_synthetic_source

    src = write_synthetic_source(tmp_path / "labels", 8, seed=5)
    res = subprocess.run(
        [sys.executable, "-m", "msk.cli", "train", "wrist", "--labels", str(src),
         "--patients-csv", str(src / "patients.csv"), "--targets", "nav", "--recipe", "ci",
         "--epochs", "1", "--out", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert doc["target"] == "nav" and Path(doc["weights"]).exists() and len(doc["losses"]) == 1
    data = Path(doc["data"]).read_text()
    assert "0: nav" in data and "lunate" not in data
