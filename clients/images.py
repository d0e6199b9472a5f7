"""Load a radiograph file (PNG/JPEG/DICOM..., 8/16-bit, gray or colour) as uint8 grayscale [H, W].

This is what every client sends to Triton: the small uint8 image, never float pixels (the
preprocessing runs on the server). 16-bit images are windowed linearly from their own minimum and
maximum to 0..255 (PNG exports of radiographs rarely use the full 16-bit range, so a fixed /257
would leave them dark); colour images are converted with ITU-R 601-2 luma (PIL's "L"); DICOM files
(recognised by their "DICM" marker, whatever their name) use `clients.dicom_pixels`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from msk.constants import IMAGE_SUFFIXES  # noqa: F401 - re-exported for callers

Image.MAX_IMAGE_PIXELS = 200_000_000   # large detector plates are fine; decompression bombs are not


class ImageLoadError(ValueError):
    """The input is not a usable image; the message names the input and the reason."""


def window_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Linearly map the image's own [min, max] to [0, 255] (constant images map to 0)."""
    values = pixels.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(pixels.shape, np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _to_gray(image: Image.Image) -> np.ndarray:
    if image.mode == "L":
        return np.asarray(image, dtype=np.uint8)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return window_to_uint8(np.asarray(image))
    return np.asarray(image.convert("L"), dtype=np.uint8)


def is_dicom(data: bytes) -> bool:
    """DICOM Part 10 files carry "DICM" after a 128-byte preamble."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def _load_dicom(data: bytes, label: str) -> np.ndarray:
    """DICOM goes through the full display pipeline (rescale, VOI LUT/window, MONOCHROME1)."""
    from clients.dicom_pixels import DicomPixelError, load_dicom_grayscale

    try:
        return load_dicom_grayscale(data, source=label)
    except DicomPixelError as exc:
        raise ImageLoadError(str(exc)) from exc


def load_grayscale(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """Decode `source` (a path or the file's bytes) to a non-empty uint8 [H, W] array."""
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as exc:
        raise ImageLoadError(f"{label}: cannot read file ({exc.strerror or exc})") from exc
    if not data:
        raise ImageLoadError(f"{label}: file is empty")
    if is_dicom(data):
        return _load_dicom(data, label)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            pixels = _to_gray(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, ImportError) as exc:
        # ImportError: Ultralytics, when imported in the same process, patches PIL.Image.open to
        # import an optional HEIF plugin for files PIL cannot identify; without it that is still
        # simply "not a readable image".
        raise ImageLoadError(f"{label}: not a readable image ({type(exc).__name__}: {exc})"
                             ) from exc
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"{label}: image too large ({exc})") from exc
    if pixels.ndim != 2 or 0 in pixels.shape:
        raise ImageLoadError(f"{label}: image has no pixels (shape {list(pixels.shape)})")
    return np.ascontiguousarray(pixels)


def validate_image(image: np.ndarray, label: str = "image") -> np.ndarray:
    """Check an in-memory image before it is sent: uint8, 2-D, non-empty."""
    if not isinstance(image, np.ndarray):
        raise ImageLoadError(f"{label}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ImageLoadError(f"{label}: expected uint8 pixels, got {image.dtype}")
    if image.ndim != 2:
        raise ImageLoadError(f"{label}: expected a 2-D grayscale image, got shape "
                             f"{list(image.shape)}")
    if 0 in image.shape:
        raise ImageLoadError(f"{label}: image has no pixels (shape {list(image.shape)})")
    return np.ascontiguousarray(image)
