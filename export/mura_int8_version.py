"""Turn the staged FP32 backbones of a new version into INT8 ones, or refuse to.

Called by `export.repository.build_repository` inside its staging transaction, after the four
FP32 backbones were exported and parity-checked: each is quantized (`export.mura_quantize`),
then the INT8 ensemble is compared with the FP32 ensemble of the same weights on the held-out
set (`export.mura_accuracy_gate`), both served by Triton as the repository will serve them
(`gate_through_triton`). A failed gate raises inside the transaction, so the repository is left
exactly as it was; the FP32 graphs used for the comparison live in the
stage's hidden `.fp32` folder and are discarded with it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from export.backbone_serving import BackboneServer, Candidate, Launch, member_names, serving_of
from export.manifest import artifact_record
from export.mura_accuracy_gate import (
    AccuracyGateFailed,
    GateResult,
    ServedEnsemble,
    compare,
    thresholds_for,
)
from export.mura_quantize import calibration_fingerprint, preprocess_images, quantize_backbone
from export.staging import ExportAborted
from msk.constants import EXPORT_BF16, MURA_MEMBERS
from msk.host import describe, isa
from training.mura_data import Record

log = logging.getLogger("msk.export")
HOLDOUT_CHUNK = 64
"""Held-out images preprocessed and scored at a time (MURA's valid split has ~3.2k images)."""


def quantize_version(stage: Path, version: int, members: dict[str, dict], records: list[dict],
                     *, calibration: Sequence[Path], holdout: Sequence[Record],
                     image_size: int, mean_graph: bytes, points: dict[str, float],
                     default_threshold: float, launch: Launch, cpu_cores: int,
                     runtimes: Callable[[dict[str, Path]], dict[str, str]],
                     ) -> tuple[list[dict], dict]:
    """Quantize the staged members of `version` in place; return their new manifest records and
    the provenance to add (precision, calibration fingerprint, the gate's numbers).

    `runtimes` maps the INT8 graphs to each member's serving runtime (fixed by
    `--cpu-runtime`, or measured on them for `auto`); the gate serves both ensembles that way
    through `launch` (`gate_through_triton`).

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
    chosen = runtimes(dict(zip(MURA_MEMBERS, int8_paths, strict=True)))
    result, served = gate_through_triton(
        launch, fp32_paths, int8_paths, chosen, "int8", cpu_cores=cpu_cores, holdout=holdout,
        image_size=image_size, mean_graph=mean_graph, points=points,
        default_threshold=default_threshold)
    if not result.passed:
        raise AccuracyGateFailed(result)
    log.info("INT8 accuracy gate passed: %s", result.summary())
    others = [r for r in records if r["model"] not in MURA_MEMBERS]
    return others + new_records, {
        "precision": "int8",
        "calibration": {"fingerprint": calibration_fingerprint(calibration),
                        "images": len(calibration)},
        "accuracy_gate": result.record() | {"served": served},
    }


def gate_through_triton(launch: Launch, fp32_paths: Sequence[Path],
                        candidate_paths: Sequence[Path], runtimes: dict[str, str],
                        candidate_precision: str, *, cpu_cores: int, holdout: Sequence[Record],
                        image_size: int, mean_graph: bytes, points: dict[str, float],
                        default_threshold: float) -> tuple[GateResult, dict]:
    """Score the held-out set with the FP32 and the candidate backbones, both served by Triton
    on each member's serving runtime and threads (`runtimes`), the FP32 ones at fp32 and the
    candidates at `candidate_precision`; return the gate's numbers and what was served.

    Raises `ExportAborted` on a held-out set the gate cannot judge (one class only)."""
    fp32 = member_names("fp32")
    candidate = member_names(candidate_precision)
    servings = {m: {"fp32": serving_of(m, cpu_cores, runtimes[m], "fp32"),
                    candidate_precision: serving_of(m, cpu_cores, runtimes[m],
                                                    candidate_precision)}
                for m in MURA_MEMBERS}
    candidates = [Candidate(fp32[m], m, p, servings[m]["fp32"])
                  for m, p in zip(MURA_MEMBERS, fp32_paths, strict=True)]
    candidates += [Candidate(candidate[m], m, p, servings[m][candidate_precision])
                   for m, p in zip(MURA_MEMBERS, candidate_paths, strict=True)]
    p32, pc = [], []
    with BackboneServer(launch, candidates, image_size, cpu_cores) as server:
        fp32_runner = ServedEnsemble(server, [fp32[m] for m in MURA_MEMBERS], mean_graph,
                                     MURA_MEMBERS)
        candidate_runner = ServedEnsemble(server, [candidate[m] for m in MURA_MEMBERS],
                                          mean_graph, MURA_MEMBERS)
        for start in range(0, len(holdout), HOLDOUT_CHUNK):   # bounded memory on large sets
            pixels = preprocess_images([r.path for r in holdout[start:start + HOLDOUT_CHUNK]],
                                       image_size)
            p32.append(fp32_runner(pixels))
            pc.append(candidate_runner(pixels))
        server_name = type(server.server).__name__
    try:
        result = compare([r.label for r in holdout], [r.study for r in holdout],
                         thresholds_for([r.body_part for r in holdout], points,
                                        default_threshold),
                         np.concatenate(p32), np.concatenate(pc))
    except ValueError as exc:
        raise ExportAborted(f"held-out set: {exc}") from exc
    served = {"through": server_name, "host": describe(), "isa": isa(),
              "backbones": {m: {k: s.record() for k, s in v.items()}
                            for m, v in servings.items()}}
    return result, served


def gate_bf16(graphs: dict[str, Path], *, holdout: Sequence[Record], image_size: int,
              mean_graph: bytes, points: dict[str, float], default_threshold: float,
              launch: Launch, cpu_cores: int,
              runtimes: Callable[[dict[str, Path]], dict[str, str]]) -> dict:
    """`--precision bf16`: the version's FP32 graphs served by OpenVINO at bf16 against the same
    graphs at fp32 on the same runtime and threads; the provenance to add, or
    `AccuracyGateFailed`. Only hosts with native bfloat16 get here (the CLI refuses others, and
    the OpenVINO backend refuses to load a bf16 config the CPU would run at f32)."""
    if not holdout:
        raise ExportAborted("--precision bf16 needs a labelled held-out set (--holdout)")
    paths = [graphs[m] for m in MURA_MEMBERS]
    chosen = runtimes(dict(graphs))
    result, served = gate_through_triton(
        launch, paths, paths, chosen, EXPORT_BF16, cpu_cores=cpu_cores, holdout=holdout,
        image_size=image_size, mean_graph=mean_graph, points=points,
        default_threshold=default_threshold)
    if not result.passed:
        raise AccuracyGateFailed(result, candidate="bf16")
    log.info("bf16 accuracy gate passed: %s", result.summary())
    return {"precision": EXPORT_BF16, "accuracy_gate": result.record() | {"served": served}}
