"""FP16 ONNX for TensorRT 11: the precision of an engine now comes from its ONNX graph.

Why: TensorRT 11 (NGC 26.06 and later; the server image pins 26.09, `.env`) builds strongly typed
networks only and removed the FP16/INT8 builder flags (`trtexec --fp16` is gone): an FP16 engine
is built from an FP16 ONNX graph. `write_fp16` converts a backbone's `model.onnx` with ONNX
Runtime's converter (`onnxruntime.transformers.float16`, the maintained one), keeping the
inputs and outputs FP32 as the Triton config says (`keep_io_types`), so clients and the rest of
the ensemble see the same tensors on CPU and GPU. `export.gpu_repository --fp16-onnx` writes it
as `model.fp16.onnx` beside `model.onnx` in every TensorRT version folder; `export.tensorrt`
builds the engine from it.
"""

from __future__ import annotations

import os
from pathlib import Path

FP16_ONNX_NAME = "model.fp16.onnx"


def write_fp16(onnx_path: Path, out: Path) -> Path:
    """Write the FP16 graph of `onnx_path` (FP32 inputs/outputs) to `out`, atomically."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    # The converter appends its input Casts at the end; the ONNX spec (and TensorRT's parser)
    # wants nodes in topological order.
    OnnxModel(model).topological_sort()
    tmp = out.with_name(out.name + ".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, out)
    return out
