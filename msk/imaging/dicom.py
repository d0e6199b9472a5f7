"""DICOM -> the 8-bit grayscale image the Triton pipelines expect (`IMAGE` UINT8 [H, W]).

Part of the one radiograph reader (`msk.imaging`): files reach it through
`msk.imaging.read_radiograph` (DICOM recognised by content); the gateway, which already holds a
parsed `Dataset`, calls `dataset_to_grayscale` directly. Both apply the same header checks
(`check_scorable`: one frame, size limits, valid rescale) before any pixel is decoded.

A radiograph's stored values are not display values: the Modality LUT (rescale slope/intercept
or a LUT sequence) maps them to physical units, the VOI LUT or window centre/width selects the
range a reader looks at, and MONOCHROME1 stores "higher is darker". The models were trained on
images as displayed (MURA's PNGs), so we reproduce the display pipeline of PS3.3 C.11 exactly:

    stored value -> Modality LUT -> VOI (LUT sequence, else window, else min-max) -> 0..255
    -> inverted for MONOCHROME1.

Compressed transfer syntaxes decode through pydicom's pixel backends; the pylibjpeg plugins
(pylibjpeg-libjpeg: JPEG baseline/extended/lossless and JPEG-LS, pylibjpeg-openjpeg: JPEG 2000,
pylibjpeg-rle or pydicom's own: RLE) make them work without GDCM.

Inputs the pipelines cannot score (multi-frame objects, objects without pixel data, palette
colour, bit depths outside 8-16, RescaleSlope 0, too few or too many pixels) raise
`RadiographError` naming the input and the reason, so a caller can skip that instance and score
the rest of the study.
"""

from __future__ import annotations

import io
import math

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from msk.constants import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE
from msk.imaging.errors import RadiographError, short_reason
from msk.imaging.window import LUMA_WEIGHTS

MIN_BITS_STORED = 8
MAX_BITS_STORED = 16
"""Radiographs store 8-16 bits; other depths (1-bit overlays, 32-bit float maps) are not images
the models were trained on."""



def _fail(source: str, detail: str, reason: str = "unsupported_image") -> RadiographError:
    return RadiographError(source, reason, detail)


def read_dataset(src: bytes | Dataset, source: str = "DICOM data") -> Dataset:
    """Parse DICOM bytes (with or without the 128-byte preamble); a Dataset passes through.

    `force=True` reads preamble-less files (old or raw objects), which is how the web app always
    read them; whether it really is DICOM is then decided by what parses.
    """
    if isinstance(src, Dataset):
        return src
    try:
        ds = dcmread(io.BytesIO(src), force=True)
        if not ds.keys() and not getattr(ds, "file_meta", None):
            raise InvalidDicomError("no DICOM elements")
        return ds
    except Exception as exc:  # noqa: BLE001 - pydicom's parser fails on garbage with many types (incl. its own BytesLengthException); all mean "corrupt"
        raise _fail(source, f"not a readable image: corrupt DICOM file ({short_reason(exc)})",
                    "unreadable_image") from None



def _number(value) -> float | None:
    """A numeric DICOM value (DS/IS, possibly multi-valued) as float; None when unparseable."""
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0] if len(value) else None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def check_scorable(ds: Dataset, source: str = "DICOM dataset") -> None:
    """Raise RadiographError unless `ds` holds one frame of 8-16 bit grayscale/colour pixels of an
    allowed size with a valid rescale.

    Header only: the gateway and the reader refuse an instance before decompressing anything.
    """
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise _fail(source, "float pixel data is not a radiograph; not supported")
        sop = ds.get("SOPClassUID", None)
        what = f"SOP class {sop.name if sop is not None else 'unknown'}"
        raise _fail(source, f"DICOM object has no pixel data ({what} is not an image)")
    frames = int(_number(ds.get("NumberOfFrames", 1)) or 1)
    if frames > 1:
        raise _fail(
            source, f"multi-frame object ({frames} frames) is not supported: the models score "
            "single-frame radiographs", "multi_frame")
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "PhotometricInterpretation"):
        if keyword not in ds or ds[keyword].value in (None, ""):
            raise _fail(source, f"missing required pixel attribute {keyword}")
    check_size(int(ds.Rows), int(ds.Columns), source)
    _check_rescale(ds, source)
    bits = int(ds.BitsStored)
    if not MIN_BITS_STORED <= bits <= MAX_BITS_STORED:
        raise _fail(
            source, f"BitsStored {bits} is outside the supported {MIN_BITS_STORED}-"
            f"{MAX_BITS_STORED}")
    photometric = str(ds.PhotometricInterpretation).upper()
    if photometric == "PALETTE COLOR":
        raise _fail(source, "PALETTE COLOR images are not radiographs; not supported")
    if photometric not in ("MONOCHROME1", "MONOCHROME2") and int(
            ds.get("SamplesPerPixel", 1)) != 3:
        raise _fail(source, f"unsupported PhotometricInterpretation {photometric}")


def check_size(rows: int, columns: int, source: str) -> None:
    """The reader's size rule (`MIN_IMAGE_SIDE` <= each side, pixels <= `MAX_IMAGE_PIXELS`)."""
    pixels = rows * columns
    if pixels > MAX_IMAGE_PIXELS:
        raise _fail(source, f"image is {columns} x {rows} pixels ({pixels:,}), too large; the "
                    f"limit is {MAX_IMAGE_PIXELS:,} pixels", "image_too_large")
    if min(rows, columns) < MIN_IMAGE_SIDE:
        raise _fail(source, f"image is {columns} x {rows} pixels, too small: both sides must be "
                    f"at least {MIN_IMAGE_SIDE} pixels", "image_too_small")


def _check_rescale(ds: Dataset, source: str) -> None:
    """RescaleSlope 0 would flatten every pixel (and used to be silently taken as 1)."""
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        if keyword in ds and ds[keyword].value not in (None, ""):
            value = _number(ds[keyword].value)
            if value is None or not math.isfinite(value):
                raise _fail(source, f"invalid {keyword} {ds[keyword].value!s}",
                            "invalid_rescale")
            if keyword == "RescaleSlope" and value == 0:
                raise _fail(source, "invalid RescaleSlope 0 (every pixel would have the same "
                            "value)", "invalid_rescale")


def _stored_values(ds: Dataset, source: str) -> np.ndarray:
    """Decode the frame; mask bits above BitsStored (old files kept overlays there)."""
    try:
        arr = ds.pixel_array
    except Exception as exc:  # decoders raise many types; all mean "cannot decode"
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown") if hasattr(
            ds, "file_meta") else "unknown"
        name = getattr(syntax, "name", syntax)
        raise _fail(source, f"not a readable image: corrupt DICOM file, cannot decode pixel "
                    f"data ({name}): {short_reason(exc)}", "unreadable_image") from None
    bits = int(ds.BitsStored)
    if arr.dtype.kind == "u" and bits < arr.dtype.itemsize * 8:
        arr = arr & np.asarray((1 << bits) - 1, dtype=arr.dtype)
    return arr


def _modality_lut(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values -> modality units (rescale slope/intercept or Modality LUT Sequence)."""
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    slope = _number(ds.get("RescaleSlope", 1))
    intercept = _number(ds.get("RescaleIntercept", 0))
    slope = 1.0 if slope is None else slope          # absent: identity (zero refused earlier)
    intercept = 0.0 if intercept is None else intercept
    return arr.astype(np.float64) * slope + intercept


def _first(value) -> float:
    """Window centre/width may be multi-valued; the first pair is the default view."""
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0]
    return float(value)


def window(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """VOI window to 0..255 per PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT, SIGMOID)."""
    y_min, y_max = 0.0, 255.0
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        return (y_max - y_min) / (1.0 + np.exp(-4.0 * (x - center) / width)) + y_min
    if function == "LINEAR_EXACT":
        y = ((x - center) / width + 0.5) * (y_max - y_min) + y_min
        y = np.where(x <= center - width / 2, y_min, y)
        return np.where(x > center + width / 2, y_max, y)
    # LINEAR (the default): width >= 1 by definition.
    width = max(width, 1.0)
    y = ((x - (center - 0.5)) / (width - 1.0 if width > 1 else 1.0) + 0.5) * (y_max - y_min) + y_min
    y = np.where(x <= center - 0.5 - (width - 1) / 2, y_min, y)
    return np.where(x > center - 0.5 + (width - 1) / 2, y_max, y)


def _voi_lut_sequence(x: np.ndarray, ds: Dataset) -> np.ndarray:
    """First VOI LUT of the sequence, output scaled from its bit depth to 0..255."""
    item = ds.VOILUTSequence[0]
    entries, first_mapped, nbits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536
    data = item.LUTData
    if isinstance(data, bytes):
        dtype = "<u2" if nbits > 8 or len(data) >= 2 * entries else "u1"
        data = np.frombuffer(data, dtype=dtype)[:entries]
    lut = np.asarray(data, dtype=np.float64).reshape(-1)[:entries]
    index = np.clip(np.rint(x).astype(np.int64) - first_mapped, 0, lut.size - 1)
    out_max = float((1 << nbits) - 1)
    # Some writers declare 16 bits for an 8-bit table (PS3.3 allows 8 or 16); scale by content.
    if lut.max(initial=0) <= 255 and nbits == 16:
        out_max = 255.0
    return lut[index] * (255.0 / out_max)


def _voi(x: np.ndarray, ds: Dataset) -> tuple[np.ndarray, str]:
    """Apply the dataset's VOI transform to 0..255; say which one was used."""
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) and "LUTData" in ds.VOILUTSequence[0]:
        return _voi_lut_sequence(x, ds), "voi_lut"
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center not in (None, "") and width not in (None, "") and _first(width) > 0:
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR")
        return window(x, _first(center), _first(width), function), "window"
    lo, hi = float(np.min(x)), float(np.max(x))
    if hi <= lo:
        return np.zeros_like(x), "minmax"
    return (x - lo) * (255.0 / (hi - lo)), "minmax"


def dataset_to_grayscale(ds: Dataset, source: str = "DICOM dataset") -> np.ndarray:
    """The display-ready uint8 [H, W] grayscale image of a single-frame DICOM instance, after the
    reader's header checks (what the gateway and `read_radiograph` use)."""
    try:
        check_scorable(ds, source)
        return display_grayscale(ds, source)
    except RadiographError:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed values (a bad window, a short LUT, lazily parsed elements) mean a corrupt file
        raise _fail(source, f"not a readable image: corrupt DICOM file ({short_reason(exc)})",
                    "unreadable_image") from None


def display_grayscale(ds: Dataset, source: str = "DICOM dataset") -> np.ndarray:
    """The PS3.3 C.11 display pipeline alone (no size limits): stored values -> uint8."""
    arr = _stored_values(ds, source)
    photometric = str(ds.PhotometricInterpretation).upper()
    if arr.ndim == 3:  # colour (RGB, or YBR that pydicom converted to RGB)
        luma = arr[..., 0] * LUMA_WEIGHTS[0] + arr[..., 1] * LUMA_WEIGHTS[1] \
            + arr[..., 2] * LUMA_WEIGHTS[2]
        scale = 255.0 / float((1 << int(ds.BitsStored)) - 1)
        return np.clip(np.rint(luma * scale), 0, 255).astype(np.uint8)
    if arr.ndim != 2:
        raise _fail(source, f"unexpected pixel array shape {list(arr.shape)}")
    y, _ = _voi(_modality_lut(arr, ds), ds)
    if photometric == "MONOCHROME1":
        y = 255.0 - y
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)
