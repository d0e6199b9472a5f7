"""Static INT8 quantization of one exported backbone (ONNX Runtime QDQ, per-channel weights).

Why static QDQ: the activations' ranges are measured once on images the user names (the
calibration set), so the served graph does no range estimation at run time, and the QDQ format
stays a plain ONNX graph that the onnxruntime backend (and TensorRT/OpenVINO) load unchanged.
Calibration images go through the one radiograph reader (`msk.imaging`) and the server's own
preprocessing graph (`training.mura_preprocess` runs `msk.graphs.mura_preprocess`), so the
ranges are the ones the served graph will see.

Which operators are quantized is chosen per architecture by measurement (docs/int8.md,
bench/bench_int8.py): ResNet-101 gains most with every operator quantized (~1.9x over FP32 with
ORT 1.32 on an AVX2 CPU); DenseNet-169 gets slower that way (0.93x) because its pre-activation
BatchNorms cannot be folded into convolutions and every Q/DQ pair around them costs more than it
saves, so only its Conv/Gemm/MatMul are quantized (~1.2x).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from export.manifest import sha256_file
from export.staging import ExportAborted
from msk.constants import MURA_TINY_ARCHITECTURE, PIXELS_TENSOR

OP_TYPES_BY_ARCHITECTURE: dict[str, list[str] | None] = {
    "densenet169": ["Conv", "Gemm", "MatMul"],  # = CONV_OPS
    "resnet101": None,                      # None = every operator ORT can quantize
    MURA_TINY_ARCHITECTURE: None,
}
"""Operators quantized per backbone architecture (measured, see the module docstring)."""

CALIBRATION_BATCH = 8
CALIBRATION_MERGE_BATCHES = 4


class CalibrationError(ExportAborted):
    """The calibration or held-out set cannot be used (empty, unreadable image); the message
    names the file. Raised inside the export's transaction, so the repository is untouched."""


def calibration_fingerprint(paths: Sequence[Path]) -> str:
    """SHA-256 over the sorted SHA-256 digests of the calibration files: the same images give the
    same fingerprint whatever their names or order."""
    digests = sorted(sha256_file(Path(p)) for p in paths)
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def preprocess_images(paths: Sequence[Path], image_size: int) -> np.ndarray:
    """Images -> float32 [N, 3, S, S] exactly as the server preprocesses them."""
    from msk.imaging import RadiographError, load_grayscale
    from training.mura_preprocess import preprocess_mura

    pixels = []
    for path in paths:
        try:
            pixels.append(preprocess_mura(load_grayscale(Path(path)), image_size))
        except (OSError, RadiographError) as exc:
            raise CalibrationError(f"{path}: cannot be read ({exc})") from exc
    return np.stack(pixels).astype(np.float32) if pixels else np.zeros(
        (0, 3, image_size, image_size), np.float32)


class _PixelsReader:
    """`CalibrationDataReader` over preprocessed pixels, in batches (the graph's batch axis is
    dynamic)."""

    def __init__(self, pixels: np.ndarray) -> None:
        self._batches: Iterator[np.ndarray] = iter(
            [pixels[i:i + CALIBRATION_BATCH] for i in range(0, len(pixels), CALIBRATION_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {PIXELS_TENSOR: batch}

    def rewind(self) -> None:  # pragma: no cover - ORT calls it only for some methods
        raise NotImplementedError


ALL_OPS = "all"
CONV_OPS = ["Conv", "Gemm", "MatMul"]


def quantize_backbone(fp32_path: Path, int8_path: Path, architecture: str,
                      calibration_pixels: np.ndarray,
                      op_types: list[str] | str | None = None) -> dict:
    """Write the INT8 QDQ graph of `fp32_path` to `int8_path`; return how it was quantized.

    `op_types` overrides the architecture's measured choice (`ALL_OPS` or a list of operator
    types; bench/bench_int8.py uses it to re-check the choice).

    `quant_pre_process` (shape inference + graph optimisation) runs first, as ONNX Runtime
    recommends, so BatchNorms are folded before ranges are measured.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration_pixels) == 0:
        raise CalibrationError("the calibration set holds no images")
    if op_types is None:
        op_types = OP_TYPES_BY_ARCHITECTURE.get(architecture)
    elif op_types == ALL_OPS:
        op_types = None
    reader = _PixelsReader(calibration_pixels)
    CalibrationDataReader.register(_PixelsReader)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="msk-quant-", dir=int8_path.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(
            str(prepared), str(int8_path), reader,
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=op_types,
            # merge ranges every few batches instead of keeping every activation of every
            # calibration image in memory (hundreds of MB per image for DenseNet-169 at 320 px)
            extra_options={"CalibTensorRangeSymmetric": False,
                           "CalibMaxIntermediateOutputs": CALIBRATION_MERGE_BATCHES},
        )
    return {"format": "QDQ", "weights": "int8 per-channel", "activations": "uint8 static",
            "calibration_method": "MinMax",
            "op_types": op_types if op_types is not None else ALL_OPS}
