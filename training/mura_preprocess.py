"""MURA preprocessing for training: runs the server's own ONNX graph through onnxruntime.

Training and serving therefore share one definition (`msk.graphs.mura_preprocess`); a test also
checks the served result against this function.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import onnxruntime as ort

from msk.constants import IMAGE_TENSOR, MURA_IMAGE_SIZE
from msk.graphs.mura_preprocess import build_preprocess_graph


@lru_cache(maxsize=8)
def _session(image_size: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # called from data-loader workers: one thread each
    return ort.InferenceSession(build_preprocess_graph(image_size).SerializeToString(),
                                sess_options=options, providers=["CPUExecutionProvider"])


def preprocess_mura(image: np.ndarray, size: int = MURA_IMAGE_SIZE) -> np.ndarray:
    """uint8 grayscale [H, W] -> float32 [3, size, size] in [0, 1]."""
    if image.dtype != np.uint8 or image.ndim != 2 or 0 in image.shape:
        raise ValueError(f"expected a non-empty uint8 [H, W] image, got {image.dtype} "
                         f"{list(image.shape)}")
    (pixels,) = _session(size).run(None, {IMAGE_TENSOR: np.ascontiguousarray(image)})
    return pixels[0]
