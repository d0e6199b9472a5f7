"""Write the `wrist_detect` Triton ensemble into a model repository.

    IMAGE (UINT8 [H, W], any size)
      -> wrist_preprocess   (ONNX: crop 3/7, letterbox 1400 x 760, CLAHE, detector letterbox)
           PIXELS [1, 3, h, w], GEOMETRY INT64 [7]
      -> wrist_joints, wrist_bones   (Ultralytics detectors, ONNX, dynamic batching)
           JOINTS_RAW / BONES_RAW [1, 4 + 3, anchors]
      -> wrist_postprocess  (python: Ultralytics NMS per detector, detector letterbox inverse,
                             study letterbox inverse -> original pixels)
           BOXES FP32 [N, 4], CLASSES BYTES [N], SCORES FP32 [N], PROVENANCE BYTES [1]

Why the postprocessing is a python model: its tensors are tiny (7 x ~22k floats) so it costs no
GPU time, and numpy lets it reproduce Ultralytics' NMS (best class per anchor, class-aware,
torchvision tie semantics) exactly - ONNX NonMaxSuppression differs in per-class limits and
ordering. Its `model.py` is export/python_models/wrist_postprocess.py; the code it calls,
`msk/wrist_geometry.py` and `msk/constants.py`, is vendored next to it so the model does not depend
on this package being installed in the serving container.

Configs come from the one description (`export.model_specs.wrist_specs`, rendered by
`export.configs`) at the detectors' input size; this module writes the artifacts.

Each call writes a new version of every wrist model (older ones stay, `latest { num_versions: 2 }`
keeps the previous one loaded); the ensemble steps use version -1 (latest).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from export.configs import render_wrist_configs, write_configs
from export.manifest import artifact_record, sha256_file
from export.model_specs import TARGETS
from export.python_step import write_python_step
from export.wrist_export import ExportedDetector, export_detector, read_onnx_metadata
from msk.constants import (
    REFERENCE_CPU_CORES,
    WRIST_CONF_THRESHOLD,
    WRIST_DETECT_MODEL,
    WRIST_DETECTORS,
    WRIST_MAX_DETECTIONS,
    WRIST_NMS_IOU,
    WRIST_POSTPROCESS_MODEL,
    WRIST_PREPROCESS_MODEL,
    detector_raw_tensor,
)
from msk.graphs.wrist_preprocess import write_preprocess_graph

VENDORED = ("constants.py", "wrist_geometry.py")
"""msk modules the postprocessing model imports, copied into its version folder."""


def _as_exported(path: Path) -> ExportedDetector:
    names, in_h, in_w = read_onnx_metadata(path)
    return ExportedDetector(path, names, in_h, in_w, sha256_file(path))


def write_wrist_models(repo: Path, weights: dict[str, Path], *, version: int,
                       target: str = "cpu", conf: float = WRIST_CONF_THRESHOLD,
                       cpu_cores: int = REFERENCE_CPU_CORES) -> list[dict]:
    """Export both detectors (`.pt`, or an already exported `.onnx`) and write the wrist models
    and the `wrist_detect` ensemble into `repo` (the export's staging folder), all five as
    `version`. Returns manifest records `{model, version, path, sha256}` (paths relative to
    `repo`). `conf` is the served score threshold (Ultralytics' predict default 0.25);
    `cpu_cores` sizes the detectors' ORT threads (`export.model_specs.intra_op_threads`)."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    missing = set(WRIST_DETECTORS) - set(weights)
    if missing:
        raise ValueError(f"wrist weights missing for {sorted(missing)}")
    repo = Path(repo)
    records: list[dict] = []
    dets: dict[str, ExportedDetector] = {}
    versions: dict[str, int] = {}
    for key, (model, classes) in WRIST_DETECTORS.items():
        src = Path(weights[key])
        if not src.exists():
            raise FileNotFoundError(f"{key} detector weights not found: {src}")
        onnx_path = repo / model / str(version) / "model.onnx"
        if src.suffix == ".onnx":
            onnx_path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, onnx_path)
            det = _as_exported(onnx_path)
        else:
            det = export_detector(src, onnx_path)
        if det.names != classes:
            raise ValueError(f"{src}: the {key} detector's classes are {list(det.names)}, "
                             f"expected {list(classes)}")
        dets[key], versions[model] = det, version
        records.append(artifact_record(repo, model, version, onnx_path))
    sizes = {(d.in_h, d.in_w) for d in dets.values()}
    if len(sizes) != 1:
        raise ValueError(f"both detectors must share one input size, got {sorted(sizes)}")
    in_h, in_w = sizes.pop()

    pre_version = post_version = ens_version = version
    pre_path = write_preprocess_graph(
        repo / WRIST_PREPROCESS_MODEL / str(pre_version) / "model.onnx", in_h, in_w)
    records.append(artifact_record(repo, WRIST_PREPROCESS_MODEL, pre_version, pre_path))

    post_dir = repo / WRIST_POSTPROCESS_MODEL / str(post_version)
    post_model = write_python_step(post_dir, "wrist_postprocess.py", VENDORED)
    provenance = {
        "pipeline": WRIST_DETECT_MODEL,
        "detectors": {WRIST_DETECTORS[k][0]: {
            "version": str(versions[WRIST_DETECTORS[k][0]]), "sha256": d.sha256,
            "classes": list(d.names)} for k, d in dets.items()},
        "preprocess": {"version": str(pre_version), "sha256": sha256_file(pre_path)},
        "postprocess": {"version": str(post_version), "sha256": sha256_file(post_model)},
        "detector_input": [in_h, in_w],
        "conf": conf, "iou": WRIST_NMS_IOU,
    }
    params = {
        "in_h": in_h, "in_w": in_w, "conf": conf, "iou": WRIST_NMS_IOU,
        "max_det": WRIST_MAX_DETECTIONS, "provenance": provenance,
        "detectors": [{"input": detector_raw_tensor(k), "names": list(d.names)}
                      for k, d in dets.items()],
    }
    (post_dir / "params.json").write_text(json.dumps(params, indent=1))
    records.append(artifact_record(repo, WRIST_POSTPROCESS_MODEL, post_version, post_model))

    ens_dir = repo / WRIST_DETECT_MODEL
    (ens_dir / str(ens_version)).mkdir(parents=True, exist_ok=True)
    write_configs(repo, render_wrist_configs(target, in_h, in_w, cpu_cores))
    return records


def rewrite_wrist_configs(repository: Path, stage: Path, version: int, target: str,
                          cpu_cores: int) -> None:
    """Render the wrist configs again into `stage` for an export that keeps wrist `version`
    (same weights): configs are not versioned, so a new `cpu_cores` must still reach them. The
    detectors' input size is read from that version's postprocessing parameters."""
    params = json.loads((repository / WRIST_POSTPROCESS_MODEL / str(version) / "params.json")
                        .read_text())
    write_configs(stage, render_wrist_configs(target, params["in_h"], params["in_w"], cpu_cores))
