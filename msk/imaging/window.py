"""The one windowing rule: any grayscale (or RGB) array -> uint8 [H, W].

Why min-max: PNG/TIFF exports of radiographs store 10-16 significant bits and rarely use the full
16-bit range, so a fixed /257 would leave them dark; the image's own minimum and maximum map to 0
and 255 (a linear full-range window, no clipping of real content). 8-bit input is returned
unchanged, a constant image becomes all zeros, colour uses ITU-R BT.601 luma (PIL's "L"). DICOM
does not come here: it has its own display pipeline (VOI LUT/window) in `msk.imaging.dicom`.
"""

from __future__ import annotations

import numpy as np

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma, for colour files and the rare RGB secondary-capture radiograph."""


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Grayscale image of any integer/float/bool dtype (or HxWx3/4 colour) -> uint8 [H, W].

    Non-finite values are the caller's to refuse first (`msk.imaging.check_pixels`); here they
    would make the whole image black.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        luma = arr[..., :3].astype(np.float64) @ np.array(LUMA_WEIGHTS)
        if arr.dtype == np.uint8:
            return np.clip(np.rint(luma), 0, 255).astype(np.uint8)
        arr = luma
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {list(arr.shape)}")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    values = arr.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.clip(np.rint((values - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
