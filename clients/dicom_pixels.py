"""DICOM -> the 8-bit grayscale image the Triton pipelines expect (`IMAGE` UINT8 [H, W]).

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
colour, bit depths outside 8-16) raise `DicomPixelError` naming the input and the reason, so a
caller can skip that instance and score the rest of the study.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

MIN_BITS_STORED = 8
MAX_BITS_STORED = 16
"""Radiographs store 8-16 bits; other depths (1-bit overlays, 32-bit float maps) are not images
the models were trained on."""

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma, for the rare RGB/YBR secondary-capture radiograph."""


class DicomPixelError(ValueError):
    """An instance whose pixels cannot become a scoring image; the message says which and why."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def read_dataset(src: str | Path | bytes | Dataset, source: str | None = None) -> Dataset:
    """Read a DICOM file (path or bytes); an already-read Dataset passes through."""
    if isinstance(src, Dataset):
        return src
    name = source or (str(src) if not isinstance(src, bytes) else "<bytes>")
    try:
        fp = io.BytesIO(src) if isinstance(src, bytes) else src
        return dcmread(fp, force=isinstance(src, bytes))
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise DicomPixelError(name, f"not a readable DICOM file ({exc})") from exc


def check_scorable(ds: Dataset, source: str = "<dataset>") -> None:
    """Raise DicomPixelError unless `ds` holds one frame of 8-16 bit grayscale/colour pixels.

    Separate from decoding so the gateway can refuse an instance cheaply before decompressing.
    """
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise DicomPixelError(source, "float pixel data is not a radiograph; not supported")
        sop = ds.get("SOPClassUID", None)
        what = f"SOP class {sop.name if sop is not None else 'unknown'}"
        raise DicomPixelError(source, f"no pixel data ({what} is not an image)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomPixelError(
            source, f"multi-frame object ({frames} frames) is not supported: the models score "
            "single-frame radiographs")
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "PhotometricInterpretation"):
        if keyword not in ds or ds[keyword].value in (None, ""):
            raise DicomPixelError(source, f"missing required pixel attribute {keyword}")
    bits = int(ds.BitsStored)
    if not MIN_BITS_STORED <= bits <= MAX_BITS_STORED:
        raise DicomPixelError(
            source, f"BitsStored {bits} is outside the supported {MIN_BITS_STORED}-"
            f"{MAX_BITS_STORED}")
    photometric = str(ds.PhotometricInterpretation).upper()
    if photometric == "PALETTE COLOR":
        raise DicomPixelError(source, "PALETTE COLOR images are not radiographs; not supported")
    if photometric not in ("MONOCHROME1", "MONOCHROME2") and int(
            ds.get("SamplesPerPixel", 1)) != 3:
        raise DicomPixelError(source, f"unsupported PhotometricInterpretation {photometric}")


def _stored_values(ds: Dataset, source: str) -> np.ndarray:
    """Decode the frame; mask bits above BitsStored (old files kept overlays there)."""
    try:
        arr = ds.pixel_array
    except Exception as exc:  # decoders raise many types; all mean "cannot decode"
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown") if hasattr(
            ds, "file_meta") else "unknown"
        name = getattr(syntax, "name", syntax)
        raise DicomPixelError(source, f"cannot decode pixel data ({name}): {exc}") from exc
    bits = int(ds.BitsStored)
    if arr.dtype.kind == "u" and bits < arr.dtype.itemsize * 8:
        arr = arr & np.asarray((1 << bits) - 1, dtype=arr.dtype)
    return arr


def _modality_lut(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values -> modality units (rescale slope/intercept or Modality LUT Sequence)."""
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
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


def dataset_to_grayscale(ds: Dataset, source: str = "<dataset>") -> np.ndarray:
    """The display-ready uint8 [H, W] grayscale image of a single-frame DICOM instance."""
    check_scorable(ds, source)
    arr = _stored_values(ds, source)
    photometric = str(ds.PhotometricInterpretation).upper()
    if arr.ndim == 3:  # colour (RGB, or YBR that pydicom converted to RGB)
        luma = arr[..., 0] * LUMA_WEIGHTS[0] + arr[..., 1] * LUMA_WEIGHTS[1] \
            + arr[..., 2] * LUMA_WEIGHTS[2]
        scale = 255.0 / float((1 << int(ds.BitsStored)) - 1)
        return np.clip(np.rint(luma * scale), 0, 255).astype(np.uint8)
    if arr.ndim != 2:
        raise DicomPixelError(source, f"unexpected pixel array shape {arr.shape}")
    y, _ = _voi(_modality_lut(arr, ds), ds)
    if photometric == "MONOCHROME1":
        y = 255.0 - y
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def load_dicom_grayscale(src: str | Path | bytes | Dataset, source: str | None = None
                         ) -> np.ndarray:
    """Read (if needed) and convert one DICOM instance; raises DicomPixelError with the reason."""
    name = source or ("<dataset>" if isinstance(src, Dataset) else
                      "<bytes>" if isinstance(src, bytes) else str(src))
    return dataset_to_grayscale(read_dataset(src, name), name)
