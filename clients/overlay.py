"""Draw labelled detection boxes onto a grayscale radiograph and save/return a PNG.

PIL only (no OpenCV, no torch) so the web app and the PACS gateway can reuse it; the label font is
Pillow's bundled default, so nothing is downloaded. Works with any object that has `class_name`,
`score`, `x1`, `y1`, `x2`, `y2` (e.g. `clients.wrist.Detection`).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from msk.imaging import to_uint8

if TYPE_CHECKING:
    from clients.wrist import Detection

# One colour per wrist structure (joints warm, bones cool); anything else is white.
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "radcar": (255, 80, 80), "capnlun": (255, 170, 0), "mna": (255, 230, 60),
    "mul": (80, 200, 255), "nav": (60, 255, 140), "lunate": (200, 120, 255),
}


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def draw_boxes(image: np.ndarray, boxes: Iterable[Detection]) -> Image.Image:
    """RGB image with one rectangle and a 'class score' label per box."""
    base = Image.fromarray(to_uint8(np.asarray(image))).convert("RGB")
    draw = ImageDraw.Draw(base)
    width = max(2, round(min(base.size) / 300))
    font = _font(max(12, round(min(base.size) / 45)))
    for b in boxes:
        colour = CLASS_COLOURS.get(b.class_name, (255, 255, 255))
        draw.rectangle([b.x1, b.y1, b.x2, b.y2], outline=colour, width=width)
        label = f"{b.class_name} {b.score:.2f}"
        tx, ty = b.x1, max(0.0, b.y1 - font.size - 2 * width) if hasattr(font, "size") else b.y1
        bbox = draw.textbbox((tx, ty), label, font=font)
        draw.rectangle(bbox, fill=(0, 0, 0))
        draw.text((tx, ty), label, fill=colour, font=font)
    return base


def overlay_png(image: np.ndarray, boxes: Iterable[Detection], path: Path | None = None) -> bytes:
    """PNG bytes of `draw_boxes`; also written to `path` when given."""
    buf = io.BytesIO()
    draw_boxes(image, boxes).save(buf, format="PNG")
    data = buf.getvalue()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return data
