"""Export a trained wrist detector (Ultralytics `.pt`) to ONNX at the serving input size.

The detector input is the study canvas (1400 x 760) letterboxed the way Ultralytics' predictor
does it to `export_size(imgsz)`: a multiple of the 32-pixel stride, so 1400 x 760 -> 1408 x 768
(scale 1408/1400, 2 grey columns each side). Training at `imgsz` already saw the canvas at that
scale, so exporting at the training size keeps train and serve identical; the preprocessing graph
(`msk/graphs/wrist_preprocess.py`) is built for the same size, read back from the ONNX metadata.

The ONNX has a dynamic batch axis (Triton's dynamic batcher groups concurrent requests) and emits
the raw head `[B, 4 + nc, anchors]`; NMS runs in the postprocessing model, as in Ultralytics.
"""

from __future__ import annotations

import ast
import shutil
from dataclasses import dataclass
from pathlib import Path

from export.manifest import sha256_file
from export.model_specs import detector_anchors
from msk.constants import ONNX_OPSET
from msk.wrist_geometry import export_size


@dataclass(frozen=True)
class ExportedDetector:
    onnx_path: Path
    names: tuple[str, ...]
    in_h: int
    in_w: int
    sha256: str

    @property
    def anchors(self) -> int:
        return detector_anchors(self.in_h, self.in_w)


def checkpoint_info(weights: Path) -> tuple[tuple[str, ...], int]:
    """(class names, training imgsz) stored in an Ultralytics checkpoint."""
    from training.wrist_train import trained_imgsz, ultralytics_offline

    ultralytics_offline()
    from ultralytics import YOLO

    model = YOLO(str(weights))
    names = tuple(model.names[i] for i in sorted(model.names))
    return names, trained_imgsz(model)


def read_onnx_metadata(path: Path) -> tuple[tuple[str, ...], int, int]:
    """(names, in_h, in_w) from the metadata Ultralytics embeds in its ONNX export."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    names = ast.literal_eval(meta["names"])
    imgsz = ast.literal_eval(meta["imgsz"])
    return tuple(names[i] for i in sorted(names)), int(imgsz[0]), int(imgsz[1])


def export_detector(weights: Path, out_path: Path, *, size: tuple[int, int] | None = None,
                    ) -> ExportedDetector:
    """`.pt` -> ONNX (opset `ONNX_OPSET`, dynamic batch, raw head) at `size` (default: the
    training size)."""
    from training.wrist_train import ultralytics_offline

    ultralytics_offline()
    from ultralytics import YOLO

    weights = Path(weights).resolve()
    names, imgsz = checkpoint_info(weights)
    in_h, in_w = size or export_size(imgsz)
    work = out_path.parent / f".export-{weights.stem}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    local = work / "detector.pt"
    shutil.copy2(weights, local)
    produced = YOLO(str(local)).export(format="onnx", imgsz=(in_h, in_w), opset=ONNX_OPSET,
                                       dynamic=True, simplify=False, half=False, device="cpu",
                                       verbose=False)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(produced), out_path)
    shutil.rmtree(work, ignore_errors=True)
    return ExportedDetector(out_path, names, in_h, in_w, sha256_file(out_path))
