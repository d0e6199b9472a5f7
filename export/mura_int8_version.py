"""Turn the staged FP32 backbones of a new version into INT8 ones, or refuse to.

Called by `export.repository.build_repository` inside its staging transaction, after the four
FP32 backbones were exported and parity-checked: each is quantized (`export.mura_quantize`),
then the INT8 ensemble is compared with the FP32 ensemble of the same weights on the held-out
set (`export.mura_accuracy_gate`). A failed gate raises inside the transaction, so the
repository is left exactly as it was; the FP32 graphs used for the comparison live in the
stage's hidden `.fp32` folder and are discarded with it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from export.manifest import artifact_record
from export.mura_accuracy_gate import AccuracyGateFailed, EnsembleRunner, compare, thresholds_for
from export.mura_quantize import calibration_fingerprint, preprocess_images, quantize_backbone
from export.staging import ExportAborted
from msk.constants import MURA_MEMBERS
from training.mura_data import Record

log = logging.getLogger("msk.export")
HOLDOUT_CHUNK = 64
"""Held-out images preprocessed and scored at a time (MURA's valid split has ~3.2k images)."""


def quantize_version(stage: Path, version: int, members: dict[str, dict], records: list[dict],
                     *, calibration: Sequence[Path], holdout: Sequence[Record],
                     image_size: int, mean_graph: bytes, points: dict[str, float],
                     default_threshold: float) -> tuple[list[dict], dict]:
    """Quantize the staged members of `version` in place; return their new manifest records and
    the provenance to add (precision, calibration fingerprint, the gate's numbers).

    Raises `AccuracyGateFailed` (an `ExportAborted`) when the INT8 ensemble fails the gate.
    """
    if not calibration:
        raise ExportAborted("--precision int8 needs calibration images (--calibration)")
    if not holdout:
        raise ExportAborted("--precision int8 needs a labelled held-out set (--holdout)")
    calibration_pixels = preprocess_images(calibration, image_size)
    fp32_dir = stage / ".fp32"
    fp32_dir.mkdir(exist_ok=True)
    int8_paths, fp32_paths, new_records = [], [], []
    for member in MURA_MEMBERS:
        served = stage / member / str(version) / "model.onnx"
        fp32 = fp32_dir / f"{member}.onnx"
        os.replace(served, fp32)
        info = quantize_backbone(fp32, served, members[member]["architecture"],
                                 calibration_pixels)
        record = artifact_record(stage, member, version, served)
        members[member].update({"sha256": record["sha256"], "quantization": info})
        new_records.append(record)
        fp32_paths.append(fp32)
        int8_paths.append(served)
        log.info("quantized %s v%d to INT8 (%s)", member, version, info["op_types"])
    fp32_runner = EnsembleRunner(fp32_paths, mean_graph, MURA_MEMBERS)
    int8_runner = EnsembleRunner(int8_paths, mean_graph, MURA_MEMBERS)
    p32, p8 = [], []
    for start in range(0, len(holdout), HOLDOUT_CHUNK):   # bounded memory on large sets
        pixels = preprocess_images([r.path for r in holdout[start:start + HOLDOUT_CHUNK]],
                                   image_size)
        p32.append(fp32_runner(pixels))
        p8.append(int8_runner(pixels))
    try:
        result = compare([r.label for r in holdout], [r.study for r in holdout],
                         thresholds_for([r.body_part for r in holdout], points,
                                        default_threshold),
                         np.concatenate(p32), np.concatenate(p8))
    except ValueError as exc:
        raise ExportAborted(f"held-out set: {exc}") from exc
    if not result.passed:
        raise AccuracyGateFailed(result)
    log.info("INT8 accuracy gate passed: %s", result.summary())
    others = [r for r in records if r["model"] not in MURA_MEMBERS]
    return others + new_records, {
        "precision": "int8",
        "calibration": {"fingerprint": calibration_fingerprint(calibration),
                        "images": len(calibration)},
        "accuracy_gate": result.record(),
    }
