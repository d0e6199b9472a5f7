"""`msk export --precision int8`: quantized backbones are promoted only through the accuracy gate.

On trained checkpoints of the synthetic proof (tiny stand-in backbones, trained for seconds, as in
tests/test_mura_training.py): calibrated on real training images the INT8 version passes the gate,
is promoted as a new version whose manifest and PROVENANCE say int8 + the calibration set's
fingerprint, and the real tritonserver serves it with the probabilities the INT8 graphs give
in-process; calibrated on all-black images (every activation range collapses, so real images
saturate) it fails the gate, the export exits non-zero naming the three numbers and their
thresholds, and the repository is byte-identical to before. The same weights + the same
calibration twice add nothing.

The promotion case must not depend on the host's kernels: ORT's INT8 kernels differ between AVX2
and VNNI/AMX hosts, and on the synthetic valid split a weak model (FP32 AUROC ~0.7 on ~30
images) fails or passes by one swapped pair. So the held-out set the gate judges is built from the
FP32 ensemble's own probabilities on this host: images at least `CALL_MARGIN` from the operating
point, labelled so that the two classes lie `CLASS_GAP` apart:
no call can flip and no pair can swap unless INT8 moves one image's probability by 3x the most it
moved any image on the AVX2 host; the broken calibration stays far outside the gate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from export.mura_accuracy_gate import MAX_AUROC_DROP, MAX_MEAN_ABS_DELTA, MIN_CALL_AGREEMENT
from msk.constants import MURA_MEMBERS, MURA_TINY_ARCHITECTURE
from tests.msk_process import run_msk

ROOT = Path(__file__).resolve().parents[1]
CALL_MARGIN = 0.1
"""Every held-out image of the promotion case lies this far from the operating point."""
CLASS_GAP = 0.2
"""...and its normal and abnormal images this far apart. The largest INT8 change of one image's
probability measured on this fixture was 0.034 on an AVX2 host (mean 0.005), so neither a call
flip (> CALL_MARGIN) nor a swapped pair (> CLASS_GAP / 2 each way) is within 3x of it."""


@pytest.fixture(scope="module")
def proof(tmp_path_factory) -> dict:
    """Synthetic MURA set + four trained tiny members in the `--checkpoints` layout.

    lr 1e-2 for 8 epochs (about 2 s a member): with lr 3e-3 for 2 epochs the ensemble gave every
    valid image a probability within 0.002 of 0.392, where INT8's 3e-4 changes swap pairs."""
    import torch

    from training.mura_data import load_splits
    from training.mura_synthetic import SyntheticSpec, generate
    from training.mura_train import load_recipe, train_member

    torch.set_flush_denormal(True)
    work = tmp_path_factory.mktemp("int8")
    generate(work / "data", SyntheticSpec(train_patients=40, valid_patients=36, min_side=96,
                                          max_side=128, seed=11))
    splits = load_splits(work / "data", test_fraction=0.25, split_seed=0)
    checkpoints = work / "checkpoints"
    checkpoints.mkdir()
    for member in MURA_MEMBERS:
        recipe = dataclasses.replace(load_recipe(f"mura_{member}"),
                                     architecture=MURA_TINY_ARCHITECTURE, image_size=64,
                                     lr=1e-2, num_workers=0, epochs=8)
        result = train_member(recipe, splits["train"], splits["valid"], work / "runs" / member,
                              device="cpu", cache=True, progress=False)
        shutil.copy(result.checkpoint, checkpoints / f"{member}.pt")
    black = work / "black"
    black.mkdir()
    from PIL import Image
    for i in range(4):
        Image.fromarray(np.zeros((100, 100), np.uint8), mode="L").save(black / f"black{i}.png")
    base = work / "data" / "MURA-v1.1"
    holdout = _separable_holdout(checkpoints, sorted((base / "valid").rglob("*.png")),
                                 work / "holdout")
    return {"checkpoints": checkpoints, "calibration": base / "train", "holdout": holdout,
            "black": black, "work": work}


def _separable_holdout(checkpoints: Path, images: list[Path], out: Path) -> Path:
    """A MURA-layout held-out set (one study per image) labelled by the FP32 ensemble itself,
    with every image `CALL_MARGIN` from the call threshold and the classes `CLASS_GAP` apart."""
    from export.configs import cam_size
    from export.mura_accuracy_gate import ensemble_probabilities
    from export.mura_mean_graph import build_mean_graph
    from export.mura_quantize import preprocess_images
    from export.repository import build_repository
    from msk.constants import MURA_DEFAULT_THRESHOLD, MURA_IMAGE_SIZE

    fp32 = out.parent / "fp32_repository"
    version = build_repository(fp32, checkpoints={m: checkpoints / f"{m}.pt"
                                                  for m in MURA_MEMBERS})
    graph = build_mean_graph(list(MURA_MEMBERS), *_biases_and_temperatures(checkpoints),
                             cam_size(MURA_IMAGE_SIZE), "{}", MURA_IMAGE_SIZE)
    p = ensemble_probabilities([fp32 / m / str(version) / "model.onnx" for m in MURA_MEMBERS],
                               graph.SerializeToString(), MURA_MEMBERS,
                               preprocess_images(images, MURA_IMAGE_SIZE))
    ranked = sorted((float(pi), image) for pi, image in zip(p, images, strict=True)
                    if abs(pi - MURA_DEFAULT_THRESHOLD) >= CALL_MARGIN)
    splits = []                             # (smaller class, negatives, positives) per cut
    for cut in range(1, len(ranked)):
        first = next((j for j in range(cut, len(ranked))
                      if ranked[j][0] - ranked[cut - 1][0] >= CLASS_GAP), len(ranked))
        splits.append((min(cut, len(ranked) - first), ranked[:cut], ranked[first:]))
    _, negatives, positives = max(splits, key=lambda split: split[0], default=(0, [], []))
    assert len(negatives) >= 4 and len(positives) >= 4, (
        f"the trained proof ensemble spreads too little to build a separable held-out set: "
        f"{sorted(round(float(x), 4) for x in p)}")
    for i, (_, image) in enumerate(negatives + positives):
        label = "negative" if i < len(negatives) else "positive"
        study = out / "XR_WRIST" / f"patient{i + 1:05d}" / f"study1_{label}"
        study.mkdir(parents=True)
        shutil.copy(image, study / "image1.png")
    return out


def _export(repository: Path, proof: dict, calibration: str, *extra: str):
    return run_msk("export", "--repository", str(repository), "--checkpoints",
                   str(proof["checkpoints"]), "--precision", "int8", "--calibration", calibration,
                   "--holdout", str(proof["holdout"]), *extra, cwd=proof["work"])


def _tree(repository: Path) -> dict[str, str]:
    """Every file under the repository (hidden ones too) -> its SHA-256."""
    return {p.relative_to(repository).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(repository.rglob("*")) if p.is_file()}


def _expected_fingerprint(folder: Path) -> str:
    """The calibration fingerprint computed independently: SHA-256 of the sorted file digests."""
    digests = sorted(hashlib.sha256(p.read_bytes()).hexdigest()
                     for p in folder.rglob("*.png"))
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


@pytest.fixture(scope="module")
def promoted(proof: dict, tmp_path_factory, tiny_repository: Path) -> dict:
    """The tiny repository plus an INT8 version of the trained checkpoints (through the CLI)."""
    repository = tmp_path_factory.mktemp("int8_repo") / "repository"
    shutil.copytree(tiny_repository, repository, ignore=shutil.ignore_patterns(".complete"))
    result = _export(repository, proof, str(proof["calibration"]))
    return {"repository": repository, "result": result}


def test_int8_version_passes_the_gate_and_is_served(promoted: dict, proof: dict) -> None:
    import tritonclient.grpc as grpcclient

    from clients.mura import MuraClient
    from export.configs import cam_size
    from export.manifest import load_manifest
    from export.mura_accuracy_gate import ensemble_probabilities
    from export.mura_mean_graph import build_mean_graph
    from export.mura_quantize import preprocess_images
    from msk.constants import MURA_ENSEMBLE_MODEL, MURA_IMAGE_SIZE
    from msk.imaging import load_grayscale
    from server.launcher import TritonServer

    result, repository = promoted["result"], promoted["repository"]
    assert result.returncode == 0, result.stderr
    version = json.loads(result.stdout)["version"]
    assert "accuracy gate passed" in result.stderr
    provenance = load_manifest(repository)["versions"][f"{MURA_ENSEMBLE_MODEL}/{version}"]
    assert provenance["precision"] == "int8"
    assert provenance["calibration"]["fingerprint"] == _expected_fingerprint(proof["calibration"])
    gate = provenance["accuracy_gate"]
    assert gate["passed"] and gate["auroc_drop"] <= MAX_AUROC_DROP
    assert gate["auroc_fp32"] == 1.0 and gate["auroc_drop"] == 0.0    # the margin, on any ISA
    n_neg = len(list(proof["holdout"].rglob("study1_negative/*.png")))
    n_pos = len(list(proof["holdout"].rglob("study1_positive/*.png")))
    assert (gate["images"], gate["studies"], gate["pairs"]) == (
        n_neg + n_pos, n_neg + n_pos, n_neg * n_pos)
    assert gate["auroc_step"] == pytest.approx(1 / (n_neg * n_pos))
    assert gate["mean_abs_delta"] <= MAX_MEAN_ABS_DELTA
    assert gate["call_agreement"] >= MIN_CALL_AGREEMENT
    # Judged as served (issue 23 item 3): both sides through tritonserver, on the runtime and
    # threads of the configs written (ORT, 2 cores // 4 backbones = 1 thread), each precision.
    assert gate["served"]["through"] == "TritonServer"
    for member in MURA_MEMBERS:
        assert gate["served"]["backbones"][member] == {
            p: {"runtime": "onnxruntime", "precision": p, "threads": 1} for p in ("fp32", "int8")}
    int8_paths = []
    for member in MURA_MEMBERS:
        path = repository / member / str(version) / "model.onnx"
        ops = {node.op_type for node in onnx.load(path).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops, member
        assert provenance["members"][member]["sha256"] == hashlib.sha256(
            path.read_bytes()).hexdigest()
        int8_paths.append(path)

    images = sorted(proof["holdout"].rglob("*.png"))[:3]
    graph = build_mean_graph(list(MURA_MEMBERS), *_biases_and_temperatures(proof["checkpoints"]),
                             cam_size(MURA_IMAGE_SIZE), "{}", MURA_IMAGE_SIZE)
    expected = ensemble_probabilities(int8_paths, graph.SerializeToString(), MURA_MEMBERS,
                                      preprocess_images(images, MURA_IMAGE_SIZE))
    with TritonServer(repository) as server, MuraClient(server.grpc_url) as client:
        scored = client.score(images, heatmaps=False)
        raw = grpcclient.InferenceServerClient(server.grpc_url)
        pixels = load_grayscale(images[0])
        request = grpcclient.InferInput("IMAGE", list(pixels.shape), "UINT8")
        request.set_data_from_numpy(pixels)
        reply = raw.infer(MURA_ENSEMBLE_MODEL, [request],
                          outputs=[grpcclient.InferRequestedOutput("PROVENANCE")])
        raw.close()
    served = json.loads(reply.as_numpy("PROVENANCE").reshape(-1)[0])
    assert served["precision"] == "int8" and served["version"] == str(version)
    assert served["calibration"]["fingerprint"] == provenance["calibration"]["fingerprint"]
    for i, item in enumerate(scored):
        assert item.error is None, item.error
        assert item.versions["pipeline"] == str(version)
        assert item.probability == pytest.approx(expected[i], abs=1e-5)


def _biases_and_temperatures(checkpoints: Path) -> tuple[list[float], list[float]]:
    from training.mura_models import load_checkpoint

    biases, temps = [], []
    for member in MURA_MEMBERS:
        model, meta = load_checkpoint(checkpoints / f"{member}.pt")
        biases.append(float(model.head.bias.item()))
        temps.append(float(meta.get("temperature") or 1.0))
    return biases, temps


def test_same_weights_and_calibration_add_nothing(promoted: dict, proof: dict) -> None:
    repository = promoted["repository"]
    version = json.loads(promoted["result"].stdout)["version"]
    before = _tree(repository)
    again = _export(repository, proof, str(proof["calibration"]))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["version"] == version
    assert "already serves these trained weights" in again.stderr
    assert _tree(repository) == before


def test_broken_calibration_fails_the_gate_and_leaves_the_repository(
        promoted: dict, proof: dict, tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    shutil.copytree(promoted["repository"], repository)
    before = _tree(repository)
    result = _export(repository, proof, str(proof["black"] / "*.png"))
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "INT8 version not promoted" in message and "FAILED" in message
    # Far outside, on any host: collapsed ranges move every probability (seen: mean 0.37-0.79,
    # 18-40x the limit), whatever happens to the calls and the ranking.
    delta = re.search(r"mean \|delta p\| ([0-9.]+) \(must be <= [0-9.]+\) FAILED", message)
    assert delta and float(delta.group(1)) > 10 * MAX_MEAN_ABS_DELTA, message
    for number in ("study AUROC drop", "mean |delta p|", "call unchanged on"):
        assert number in message
    for threshold in (f"<= {MAX_AUROC_DROP}", f"<= {MAX_MEAN_ABS_DELTA}",
                      f">= {100 * MIN_CALL_AGREEMENT:.0f} %"):
        assert threshold in message
    assert _tree(repository) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repository"]   # no staging left


def test_int8_refuses_gpu_and_missing_sets(proof: dict, tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    gpu = _export(repository, proof, str(proof["calibration"]), "--target", "gpu")
    assert gpu.returncode == 2 and "--target cpu only" in gpu.stderr
    no_holdout = run_msk("export", "--repository", str(repository), "--tiny", "--precision",
                         "int8", "--calibration", str(proof["calibration"]), cwd=tmp_path)
    assert no_holdout.returncode == 2 and "--holdout" in no_holdout.stderr
    unlabelled = _export(repository, proof, str(proof["calibration"]), "--holdout",
                         str(proof["black"]))
    assert unlabelled.returncode == 2 and "has no label" in unlabelled.stderr
    assert not repository.exists()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "scan.png").write_bytes(b"not a png at all")
    unreadable = _export(repository, proof, str(broken))
    assert unreadable.returncode == 2, unreadable.stderr
    assert f"{broken / 'scan.png'}: cannot be read" in unreadable.stderr
    assert not any(p.is_dir() for p in repository.iterdir() if p.name != ".msk-export.lock")



def test_gate_numbers_and_verdict() -> None:
    """The three numbers on hand-made probabilities: a uniform shift keeps the ranking (no AUROC
    drop) but fails mean |delta p|; flipped calls fail the agreement; studies average images."""
    from export.mura_accuracy_gate import compare, thresholds_for

    labels = [0, 0, 1, 1, 1, 0]
    studies = ["s1", "s1", "s2", "s2", "s3", "s4"]
    thresholds = thresholds_for(["wrist", "wrist", "hand", "hand", None, "wrist"],
                                {"wrist": 0.5, "hand": 0.4}, default=0.6)
    assert thresholds == [0.5, 0.5, 0.4, 0.4, 0.6, 0.5]
    fp32 = np.array([0.10, 0.20, 0.70, 0.80, 0.90, 0.30])
    same = compare(labels, studies, thresholds, fp32, fp32.copy())
    assert same.passed and same.studies == 4 and same.auroc_drop == 0.0
    assert same.pairs == 2 * 2 and same.auroc_step == 0.25    # s2, s3 abnormal; s1, s4 normal
    assert "on 6 images, 4 studies, 4 normal/abnormal study pairs (one swapped pair = 0.2500 " \
        "AUROC, so one swap alone fails the AUROC criterion)" in same.summary()
    shifted = compare(labels, studies, thresholds, fp32, fp32 + 0.03)
    assert shifted.auroc_drop == 0.0 and shifted.mean_abs_delta == pytest.approx(0.03)
    assert not shifted.passed and "mean |delta p| 0.0300 (must be <= 0.02) FAILED" in \
        shifted.summary()
    flipped = fp32.copy()
    flipped[4] = 0.59                       # study s3 stays the top abnormal: ranking kept
    result = compare(labels, studies, thresholds, fp32, flipped)
    assert result.call_agreement == pytest.approx(5 / 6) and not result.passed
    swapped = compare(labels, studies, thresholds, fp32, np.array([0.1, 0.2, 0.1, 0.2, 0.9, 0.3]))
    assert swapped.auroc_fp32 == 1.0 and swapped.auroc_drop > MAX_AUROC_DROP
