"""Decode one uploaded file into the uint8 grayscale image the server expects.

The format is decided from the file's bytes (magic numbers), not from its name or the browser's
content type, so a renamed or truncated file gets an honest message. Every failure is an
`UploadError` whose text names the file and says what was wrong in words a person can act on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_UPLOAD_BYTES = 64 * 1024 * 1024
"""Largest single upload; a radiograph is a few MB, a bigger file is almost certainly not one."""

SUPPORTED = "PNG, JPEG or DICOM"

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
_KNOWN_OTHERS: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"%PDF", "PDF"), (b"PK\x03\x04", "ZIP"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"), (b"RIFF", "RIFF/WebP"),
)


class UploadError(ValueError):
    """An uploaded file that cannot be scored; the message is shown to the user as is."""


@dataclass(frozen=True)
class DecodedUpload:
    filename: str
    kind: str                       # "PNG" | "JPEG" | "DICOM"
    image: np.ndarray               # uint8 [H, W]
    body_part: str | None = None    # from the DICOM header when it names a MURA body part


def sniff(data: bytes, filename: str) -> str:
    """Return "PNG", "JPEG" or "DICOM", or raise UploadError naming what the file looks like."""
    if not data:
        raise UploadError(f"{filename}: the file is empty")
    if data.startswith(_PNG):
        return "PNG"
    if data.startswith(_JPEG):
        return "JPEG"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "DICOM"
    if filename.lower().endswith((".dcm", ".dicom")):
        # DICOM without the 128-byte preamble (old or raw files): let the DICOM reader decide.
        return "DICOM"
    for magic, name in _KNOWN_OTHERS:
        if data.startswith(magic):
            raise UploadError(f"{filename}: unsupported format ({name}); upload {SUPPORTED} images")
    if filename.lower().endswith((".png", ".jpg", ".jpeg")):
        raise UploadError(
            f"{filename}: the file is named like an image but its content is not {SUPPORTED} "
            "(corrupt or mislabelled file)"
        )
    raise UploadError(f"{filename}: unsupported format; upload {SUPPORTED} images")


def decode(data: bytes, filename: str) -> DecodedUpload:
    """Decode an upload; raise UploadError with a readable reason if it cannot be scored."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(
            f"{filename}: file too large ({len(data) / 2**20:.0f} MB; at most "
            f"{MAX_UPLOAD_BYTES // 2**20} MB)"
        )
    kind = sniff(data, filename)
    if kind == "DICOM":
        image, body_part = _decode_dicom(data, filename)
        return DecodedUpload(filename, kind, image, body_part)
    from clients.images import load_grayscale

    try:
        image = load_grayscale(data, filename)
    except Exception as exc:  # noqa: BLE001 - ImageLoadError or any decoder failure: corrupt
        reason = _short(exc).removeprefix(f"{filename}: ")
        raise UploadError(f"{filename}: corrupt {kind} file ({reason})") from None
    return DecodedUpload(filename, kind, _check_image(image, filename), None)


def _decode_dicom(data: bytes, filename: str) -> tuple[np.ndarray, str | None]:
    """DICOM pixels through the PACS side's `clients.dicom_pixels` (Modality LUT, VOI,
    MONOCHROME1, compressed syntaxes), so the web app and the gateway see identical images."""
    from clients.dicom_pixels import DicomPixelError, dataset_to_grayscale, read_dataset

    try:
        ds = read_dataset(data, filename)
        image = dataset_to_grayscale(ds, filename)
    except DicomPixelError as exc:
        raise UploadError(f"{filename}: cannot use this DICOM file ({_short(exc.reason)})"
                          ) from None
    except Exception as exc:  # noqa: BLE001 - a decoder failure is a corrupt file to the user
        raise UploadError(f"{filename}: corrupt DICOM file ({_short(exc)})") from None
    return _check_image(np.asarray(image), filename), _dicom_body_part(ds)


def _dicom_body_part(ds) -> str | None:
    """The MURA body part the gateway's routing rules read from the header (None if none)."""
    from clients.routing import Router

    return Router().route(ds).body_part


def _check_image(image: np.ndarray, filename: str) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 2 or min(image.shape) < 8:
        raise UploadError(
            f"{filename}: decoded to an unusable image (shape {tuple(image.shape)}, "
            f"{image.dtype}); expected a grayscale radiograph at least 8x8 pixels"
        )
    return image


def _short(exc: BaseException, limit: int = 160) -> str:
    """First line of an exception message, bounded: reasons, never tracebacks."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"
