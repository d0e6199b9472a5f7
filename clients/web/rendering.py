"""Turn arrays into what a browser shows: PNG data URLs for the radiograph and its heatmap.

Everything is done with numpy + Pillow in the web process (no model, no torch). The heatmap is
colour-mapped here rather than in the browser so that the page needs no canvas maths and the
browser test can compare what is shown with what the API returned.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

DISPLAY_MAX_SIDE = 1024
"""Longest side of the radiograph sent back for display; boxes stay in original pixels and are
drawn in an SVG whose viewBox is the original size, so downscaling never moves them."""

# Anchor colours of a perceptually ordered "inferno"-like ramp (dark = low, yellow = high).
_RAMP = np.array(
    [
        [0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99],
        [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164],
    ],
    dtype=np.float64,
)


def colormap(values: np.ndarray) -> np.ndarray:
    """Map uint8 values (0..255) to RGB uint8 [H, W, 3] along the ramp above."""
    v = np.asarray(values, dtype=np.float64) / 255.0 * (len(_RAMP) - 1)
    lo = np.clip(np.floor(v).astype(np.int64), 0, len(_RAMP) - 2)
    frac = (v - lo)[..., None]
    rgb = _RAMP[lo] * (1.0 - frac) + _RAMP[lo + 1] * frac
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def stretch(heatmap: np.ndarray) -> np.ndarray:
    """Per-image min-max stretch of a uint8 heatmap to 0..255.

    Why: an untrained or confident model's map can sit in a narrow band of grey levels; the
    relative view shows *where* the model looked. A constant map stays constant (zero): no
    invented contrast.
    """
    h = np.asarray(heatmap, dtype=np.float64)
    lo, hi = float(h.min()), float(h.max())
    if hi <= lo:
        return np.zeros(h.shape, dtype=np.uint8)
    return np.clip(np.rint((h - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def png_data_url(array: np.ndarray) -> str:
    """Encode a uint8 gray [H, W] or RGB [H, W, 3] array as a `data:image/png;base64,` URL."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def display_image(gray: np.ndarray) -> np.ndarray:
    """Downscale a uint8 grayscale radiograph so its longest side is at most DISPLAY_MAX_SIDE."""
    h, w = gray.shape
    scale = DISPLAY_MAX_SIDE / max(h, w)
    if scale >= 1.0:
        return gray
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.BILINEAR))


def heatmap_views(heatmap: np.ndarray) -> dict[str, str]:
    """The two colour-mapped views of a HEATMAP: `absolute` (0..255 = probability 0..1) and
    `relative` (stretched per image)."""
    return {
        "absolute": png_data_url(colormap(heatmap)),
        "relative": png_data_url(colormap(stretch(heatmap))),
    }
