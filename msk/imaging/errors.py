"""The one error type of the radiograph reader, and the reasons it gives.

Why a reason code next to the message: callers classify by it (a batch row's `error_reason`, the
web app's HTTP status) instead of matching message text, and the codes are documented in
docs/batch-scoring.md. The message always starts with the input's name (a path or an upload's
filename), never with a Python repr.
"""

from __future__ import annotations

import re

REASONS: dict[str, str] = {
    "input_not_found": "no such file",
    "not_a_file": "a folder, FIFO, socket, device or symbolic-link loop, not a regular file",
    "unreadable_file": "the file exists but cannot be read (permissions, I/O error)",
    "empty_file": "the file has no bytes",
    "file_too_large": "the file is larger than MAX_IMAGE_BYTES, or a deflated DICOM data set "
                      "expands beyond it (inflated with a cap, never whole)",
    "unreadable_image": "not PNG, JPEG, TIFF, BMP, PGM/PPM or DICOM (e.g. GIF, PDF, text), or one "
                        "of those but corrupt or truncated (the message says which)",
    "image_too_large": "more pixels than MAX_IMAGE_PIXELS, or DICOM pixel data that expands "
                       "beyond MAX_IMAGE_BYTES (read from the header and the codestream's frame "
                       "header, not decoded)",
    "image_too_small": "a side shorter than MIN_IMAGE_SIDE",
    "multi_frame": "more than one frame (animated GIF/PNG, multi-page TIFF, multi-frame DICOM)",
    "non_finite_pixels": "NaN or infinite pixel values (float TIFF)",
    "invalid_rescale": "DICOM RescaleSlope 0 or non-finite rescale values",
    "unsupported_image": "an image the models cannot score (no pixel data, palette colour, bit "
                         "depth outside 8-16, bit fields that contradict each other, wrong array "
                         "shape or type)",
}
"""Reason code -> what it means; every `RadiographError.reason` is one of these."""


class RadiographError(ValueError):
    """An input that cannot become a scoring image: `source` names it, `reason` is a code from
    `REASONS`, `detail` says what was wrong in words a person can act on."""

    def __init__(self, source: str, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown radiograph error reason {reason!r}")
        super().__init__(f"{source}: {detail}")
        self.source = source
        self.reason = reason
        self.detail = detail


def format_bytes(n: int) -> str:
    """A byte count for messages: '1.0 GiB (1073741824 bytes)'."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit} ({n} bytes)"
    return f"{n} bytes"


_REPR = re.compile(r"<[^<>]*? object at 0x[0-9a-fA-F]+>")


def short_reason(exc: BaseException, limit: int = 160) -> str:
    """A library exception as one bounded line for a message: the first line, Python reprs such
    as `<_io.BytesIO object at 0x...>` replaced by "the data" (the caller names the input)."""
    text = _REPR.sub("the data", (str(exc).strip().splitlines() or [type(exc).__name__])[0])
    text = text or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
