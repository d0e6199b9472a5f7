"""Reference (OpenCV) implementation of the wrist study's preprocessing.

Training data are written through this function, and the Triton preprocessing graph
(`msk/graphs/wrist_preprocess.py`) is tested against it (CLAHE parity within one grey level), so
the detector sees the same pixels in training and in serving. Geometry comes from
`msk.wrist_geometry`; this module adds only the pixel operations:

    8/16-bit image -> to_uint8 -> drop top 3/7 -> cv2.resize (INTER_LINEAR, aspect kept)
    -> centred on a black 1400 x 760 canvas -> CLAHE(clip 2.0, 8 x 8 tiles) -> (/255 for 0..1)

The resize is cv2's INTER_LINEAR rule (the study's `cv2.resize` default: half-pixel centres,
clamped borders, no antialiasing) written out in float32 numpy, with the same operations in the
same order as the ONNX graph, so that both produce bit-identical canvases; cv2's own uint8 resize
rounds through 11-bit fixed point and differs from it by one grey level on ~10 % of pixels, which
CLAHE would amplify into a train/serve mismatch. (It equals `cv2.resize` on float32 input to
~1e-5 of a grey level.)
"""

from __future__ import annotations

import cv2
import numpy as np

from msk.constants import WRIST_CLAHE_CLIP_LIMIT, WRIST_CLAHE_GRID
from msk.imaging import to_uint8
from msk.wrist_geometry import (
    DETECTOR_PAD_VALUE,
    DetectorLetterbox,
    StudyLetterbox,
    study_letterbox,
)


def axis_coefficients(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (x0, x1) and weight of x1 for each output position, float32 as the graph."""
    j = np.arange(n_out, dtype=np.float32)
    scale = np.float32(n_in) / np.float32(n_out)
    src = (j + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    x0f = np.floor(src)
    a = src - x0f
    last = np.float32(n_in - 1)
    at_end = x0f >= last
    x0f = np.where(at_end, last, x0f)
    a = np.where(at_end, np.float32(0.0), a).astype(np.float32)
    x0 = x0f.astype(np.int64)
    return x0, np.minimum(x0 + 1, n_in - 1), a


def resize_linear(image: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """uint8 bilinear resize (cv2 INTER_LINEAR rule, float32, rounded half to even)."""
    f = image.astype(np.float32)
    x0, x1, a = axis_coefficients(f.shape[1], new_w)
    t = f[:, x0] * (np.float32(1.0) - a) + f[:, x1] * a
    y0, y1, b = axis_coefficients(f.shape[0], new_h)
    b = b[:, None]
    out = t[y0] * (np.float32(1.0) - b) + t[y1] * b
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def letterbox_canvas(image: np.ndarray) -> tuple[np.ndarray, StudyLetterbox]:
    """Crop + resize + pad (no CLAHE): uint8 1400 x 760 canvas and its geometry."""
    img = to_uint8(image)
    geo = study_letterbox(*img.shape)
    cropped = img[geo.crop_top:]
    resized = resize_linear(cropped, geo.new_h, geo.new_w)
    canvas = np.zeros((geo.out_h, geo.out_w), np.uint8)
    canvas[geo.pad_top:geo.pad_top + geo.new_h, geo.pad_left:geo.pad_left + geo.new_w] = resized
    return canvas, geo


def clahe(canvas: np.ndarray) -> np.ndarray:
    tiles = tuple(int(t) for t in WRIST_CLAHE_GRID)
    return cv2.createCLAHE(clipLimit=WRIST_CLAHE_CLIP_LIMIT, tileGridSize=tiles).apply(canvas)


def preprocess_wrist_uint8(image: np.ndarray) -> tuple[np.ndarray, StudyLetterbox]:
    """The study's preprocessing as uint8 (what training images are saved as)."""
    canvas, geo = letterbox_canvas(image)
    return clahe(canvas), geo


def preprocess_wrist(image: np.ndarray) -> tuple[np.ndarray, StudyLetterbox]:
    """The study's preprocessing scaled to 0..1 (float32 1400 x 760)."""
    out, geo = preprocess_wrist_uint8(image)
    return out.astype(np.float32) / 255.0, geo


def detector_input(canvas_u8: np.ndarray, box: DetectorLetterbox) -> np.ndarray:
    """Ultralytics' predict-time LetterBox of the CLAHE canvas -> float32 [3, in_h, in_w] in 0..1
    (what the ONNX detector receives; used to check the graph and the exported detectors)."""
    nh, nw = box.resized
    top, bottom, left, right = box.pads
    img = canvas_u8
    if (nh, nw) != img.shape[:2]:
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT,
                             value=DETECTOR_PAD_VALUE)
    return np.repeat(img[None].astype(np.float32) / 255.0, 3, axis=0)
