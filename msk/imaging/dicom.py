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
pylibjpeg-rle: RLE, pydicom's own decoder only where it is missing) make them work without
GDCM.

Inputs the pipelines cannot score (multi-frame objects, objects without pixel data, palette
colour, bit depths outside 8-16 or bit fields that contradict each other, RescaleSlope 0, too few
or too many pixels) raise `RadiographError` naming the input and the reason, so a caller can skip
that instance and score the rest of the study.

Nothing is inflated or decoded on trust. A small file can claim a huge image: a Deflated data set
(1.2.840.10008.1.2.1.99) of 1.5 MB inflates to 1.5 GB, and a JPEG frame whose own header says
60000 x 60000 decodes to gigabytes whatever Rows/Columns say. So the data set is inflated with a
cap (`inflate`, never more than `MAX_IMAGE_BYTES`, the limit of an uncompressed file), and the
decoded size of the pixel data, from Rows/Columns/SamplesPerPixel/BitsAllocated and from the
codestream's own frame header (`codestream_size`), is held to the reader's limits before any
decoder runs. RLE is decoded by pylibjpeg-rle, which writes into a Rows x Columns buffer (pydicom's
own RLE decoder grows its output with whatever the segments claim).
"""

from __future__ import annotations

import io
import math
import struct
import zlib

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.dataset import FileDataset
from pydicom.encaps import generate_fragments, parse_basic_offsets
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filereader import read_dataset as read_elements
from pydicom.multival import MultiValue
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)

from msk.constants import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE
from msk.imaging.errors import RadiographError, format_bytes, short_reason
from msk.imaging.window import LUMA_WEIGHTS

MIN_BITS_STORED = 8
MAX_BITS_STORED = 16
"""Radiographs store 8-16 bits; other depths (1-bit overlays, 32-bit float maps) are not images
the models were trained on."""

BITS_ALLOCATED = (1, 8, 16, 32)
"""The BitsAllocated values of PS3.5 8.1.1 for integer pixel data (64 is float data only)."""

PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
"""Float, Double Float and (integer) Pixel Data: where a header-only read stops."""

_HEADER_SYNTAXES = frozenset(JPEGTransferSyntaxes + JPEGLSTransferSyntaxes
                             + JPEG2000TransferSyntaxes)
"""Syntaxes whose frames must start with a JPEG/JPEG-LS frame header or a JPEG 2000 (HTJ2K
included) SIZ marker: without one, the frame is refused before a decoder guesses."""

_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                       0xCF, 0xF7})
"""JPEG start-of-frame markers (baseline, extended, progressive, lossless, hierarchical,
arithmetic) and JPEG-LS's SOF55 (0xF7): all carry precision, height, width, components."""

_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def _fail(source: str, detail: str, reason: str = "unsupported_image") -> RadiographError:
    return RadiographError(source, reason, detail)


def read_dataset(src: bytes | Dataset, source: str = "DICOM data",
                 stop_before_pixels: bool = False) -> Dataset:
    """Parse DICOM bytes (with or without the 128-byte preamble); a Dataset passes through.

    `force=True` reads preamble-less files (old or raw objects), which is how the web app always
    read them; whether it really is DICOM is then decided by what parses. A Deflated data set is
    inflated here with a cap (`inflate`), never by pydicom, which inflates whatever it is given.
    """
    if isinstance(src, Dataset):
        return src
    try:
        ds = _parse(src, source, stop_before_pixels)
        if not ds.keys() and not getattr(ds, "file_meta", None):
            raise InvalidDicomError("no DICOM elements")
        return ds
    except RadiographError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom's parser fails on garbage with many types (incl. its own BytesLengthException); all mean "corrupt"
        raise _fail(source, f"not a readable image: corrupt DICOM file ({short_reason(exc)})",
                    "unreadable_image") from None


def _parse(src: bytes, source: str, stop_before_pixels: bool) -> Dataset:
    """`dcmread`, except for a Deflated data set. The file meta group is read by the same pydicom
    functions `dcmread` uses, so what is inflated here is exactly what pydicom would inflate."""
    fp = io.BytesIO(src)
    preamble = read_preamble(fp, True)
    meta = _read_file_meta_info(fp)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return dcmread(io.BytesIO(src), force=True, stop_before_pixels=stop_before_pixels)
    data = DicomBytesIO(inflate(memoryview(src)[fp.tell():], source))
    stop = (lambda tag, vr, length: tag in PIXEL_DATA_TAGS) if stop_before_pixels else None
    elements = read_elements(data, is_implicit_VR=False, is_little_endian=True, stop_when=stop)
    # Named by the input, not holding the inflated buffer: the values were copied out of it.
    ds = FileDataset(source, elements, preamble, meta, is_implicit_VR=False,
                     is_little_endian=True)
    ds.set_original_encoding(False, True, elements._character_set)
    return ds


def inflate(data: bytes | memoryview, source: str, limit: int = MAX_IMAGE_BYTES) -> bytes:
    """Inflate a raw DEFLATE stream (PS3.5 A.5) of at most `limit` bytes, or refuse it.

    Two passes: the first only counts the output, a step of `_INFLATE_STEP` bytes at a time, and
    stops as soon as the count passes `limit`, so refusing a bomb costs one step of memory, not
    what it would expand to; the second inflates into one buffer of the counted size. The limit
    is the reader's file limit: an inflated data set is what an uncompressed file would hold.
    """
    measured = _inflated_size(data, limit, source)
    if measured is None:
        raise _fail(source, f"deflated DICOM data expands beyond the limit: "
                    f"{format_bytes(len(data))} inflate to more than {format_bytes(limit)}",
                    "file_too_large")
    size, consumed = measured
    out = zlib.decompress(data[:consumed], -zlib.MAX_WBITS, max(size, 1))
    if len(out) != size:      # the same bytes inflate the same way; never trust it twice
        raise _fail(source, "not a readable image: corrupt deflated DICOM data",
                    "unreadable_image")
    return out


_INFLATE_STEP = 1 << 20
"""Bytes of input, and of output, per step of `_inflated_size` (zlib expands up to ~1000x)."""


def _inflated_size(data: bytes | memoryview, limit: int, source: str) -> tuple[int, int] | None:
    """(inflated size, input bytes up to the end of the stream), or None past `limit`; nothing
    of the output is kept."""
    view = memoryview(data)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        for start in range(0, len(view), _INFLATE_STEP):
            chunk = view[start:start + _INFLATE_STEP]
            pending: bytes | memoryview = chunk
            while True:
                produced = len(inflater.decompress(pending, _INFLATE_STEP))
                total += produced
                if total > limit:
                    return None
                pending = inflater.unconsumed_tail
                if inflater.eof or (not pending and produced < _INFLATE_STEP):
                    break
            if inflater.eof:
                return total, start + len(chunk) - len(inflater.unused_data)
    except zlib.error as exc:
        raise _fail(source, f"not a readable image: corrupt deflated DICOM data "
                    f"({short_reason(exc)})", "unreadable_image") from None
    raise _fail(source, "not a readable image: corrupt DICOM file (the deflated data set is "
                "truncated)", "unreadable_image")


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
    check_bit_fields(ds, source)
    check_decoded_size(ds, source)
    check_encoded_pixels(ds, source)
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


def check_bit_fields(ds: Dataset, source: str = "DICOM dataset") -> None:
    """BitsAllocated, BitsStored, HighBit and SamplesPerPixel must agree (PS3.5 8.1.1, PS3.3
    C.7.6.3.1): a HighBit of 40 in 16-bit pixels used to be scored as if it were 11, silently."""
    allocated, stored = int(ds.BitsAllocated), int(ds.BitsStored)
    if allocated not in BITS_ALLOCATED:
        raise _fail(source, f"invalid bit fields: BitsAllocated {allocated} is not one of "
                    f"{', '.join(map(str, BITS_ALLOCATED))}")
    if stored > allocated:
        raise _fail(source, f"invalid bit fields: BitsStored {stored} is more than "
                    f"BitsAllocated {allocated}")
    high = ds.get("HighBit")
    if high not in (None, ""):
        high = int(high)
        if high != stored - 1:
            raise _fail(source, f"invalid bit fields: HighBit {high} does not match BitsStored "
                        f"{stored} (it must be {stored - 1}, below BitsAllocated {allocated})")
    samples = int(_number(ds.get("SamplesPerPixel", 1)) or 1)
    if samples not in (1, 3):
        raise _fail(source, f"invalid SamplesPerPixel {samples} (1 for grayscale, 3 for colour)")


def check_decoded_size(ds: Dataset, source: str = "DICOM dataset") -> None:
    """Rows x Columns x SamplesPerPixel x NumberOfFrames x BitsAllocated / 8, what any decoder
    allocates, within `MAX_IMAGE_BYTES` (what an uncompressed file may hold), before decoding."""
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples = int(_number(ds.get("SamplesPerPixel", 1)) or 1)
    frames = int(_number(ds.get("NumberOfFrames", 1)) or 1)
    allocated = int(ds.BitsAllocated)
    size = (rows * columns * samples * frames * allocated + 7) // 8
    if size > MAX_IMAGE_BYTES:
        raise _fail(source, f"pixel data expands beyond the limit: {columns} x {rows} pixels x "
                    f"{samples} sample(s) x {allocated} bits decode to {format_bytes(size)}; "
                    f"the limit is {format_bytes(MAX_IMAGE_BYTES)}", "image_too_large")


def check_encoded_pixels(ds: Dataset, source: str = "DICOM dataset") -> None:
    """What the pixel data itself declares, before a decoder sees it.

    Encapsulated (compressed) frames: the size in the codestream's own header, which is what the
    JPEG/JPEG-LS/JPEG 2000 decoders allocate whatever Rows/Columns say, held to the limits.
    Native frames: bytes for several frames under a header that says one are a multi-frame
    object (pydicom would return them all, and they used to be scored as a colour image).
    """
    syntax = _syntax(ds)
    if syntax is not None and syntax.is_encapsulated:
        fragment = _first_fragment(ds, source)
        declared = codestream_size(fragment)
        if declared is None:
            if syntax in _HEADER_SYNTAXES:
                raise _fail(source, f"not a readable image: corrupt DICOM file, the "
                            f"{syntax.name} pixel data has no frame header", "unreadable_image")
            return
        _check_codestream(declared, source)
        return
    if "PixelData" not in ds:
        return
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples = int(_number(ds.get("SamplesPerPixel", 1)) or 1)
    frame = (rows * columns * samples * int(ds.BitsAllocated) + 7) // 8
    held = len(ds.PixelData or b"")
    if frame and held >= 2 * frame:
        raise _fail(source, f"pixel data holds {held // frame} frames of {columns} x {rows} "
                    "pixels but the header declares one: multi-frame objects are not supported",
                    "multi_frame")


def _syntax(ds: Dataset) -> UID | None:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(syntax)) if syntax else None


def _first_fragment(ds: Dataset, source: str) -> bytes:
    """The first fragment of the first frame (where its codestream header is)."""
    try:
        buffer = io.BytesIO(ds.PixelData)
        parse_basic_offsets(buffer)
        return next(generate_fragments(buffer), b"")
    except Exception as exc:  # noqa: BLE001 - malformed item tags/lengths, any type: corrupt
        raise _fail(source, f"not a readable image: corrupt DICOM file, encapsulated pixel "
                    f"data ({short_reason(exc)})", "unreadable_image") from None


def codestream_size(data: bytes) -> tuple[str, int, int, int, int] | None:
    """(kind, width, height, components, bits per sample) from the frame header of a JPEG,
    JPEG-LS or JPEG 2000 codestream (or JP2 file); None when `data` starts with none of them."""
    if data.startswith(b"\xff\xd8"):
        return _jpeg_frame_header(data)
    if data.startswith(_J2K_SOC_SIZ):
        return _j2k_siz(data, 0)
    if data.startswith(_JP2_SIGNATURE):
        start = data.find(_J2K_SOC_SIZ, 0, 1 << 16)
        return _j2k_siz(data, start) if start >= 0 else None
    return None


def _jpeg_frame_header(data: bytes) -> tuple[str, int, int, int, int] | None:
    """The SOFn (or JPEG-LS SOF55) segment: walk the marker segments after SOI to it."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:                               # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:     # TEM, RSTn: no length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):                       # EOI or SOS before any frame header
            return None
        if marker in _JPEG_SOF:
            if pos + 10 > len(data):
                return None
            precision, height, width, components = struct.unpack_from(">BHHB", data, pos + 4)
            kind = "JPEG-LS" if marker == 0xF7 else "JPEG"
            return kind, width, height, components, precision
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if length < 2:
            return None
        pos += 2 + length
    return None


def _j2k_siz(data: bytes, start: int) -> tuple[str, int, int, int, int] | None:
    """The SIZ segment that follows SOC: image and offset extents, components, their depths."""
    siz = start + 4                                      # Lsiz
    if len(data) < siz + 38:
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", data, siz + 4)
    components = struct.unpack_from(">H", data, siz + 36)[0]
    depths = data[siz + 38:siz + 38 + 3 * components:3]
    bits = max(((d & 0x7F) + 1 for d in depths), default=0)
    return "JPEG 2000", max(xsiz - xosiz, 0), max(ysiz - yosiz, 0), components, bits


def _check_codestream(declared: tuple[str, int, int, int, int], source: str) -> None:
    kind, width, height, components, bits = declared
    pixels = width * height
    if pixels > MAX_IMAGE_PIXELS:
        raise _fail(source, f"{kind} pixel data expands beyond the limit: its frame header "
                    f"declares {width} x {height} pixels ({pixels:,}); the limit is "
                    f"{MAX_IMAGE_PIXELS:,} pixels", "image_too_large")
    size = pixels * components * (1 if bits <= 8 else 2 if bits <= 16 else 4)
    if size > MAX_IMAGE_BYTES:
        raise _fail(source, f"{kind} pixel data expands beyond the limit: its frame header "
                    f"declares {width} x {height} pixels x {components} components of {bits} "
                    f"bits, {format_bytes(size)} decoded; the limit is "
                    f"{format_bytes(MAX_IMAGE_BYTES)}", "image_too_large")


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
    if _syntax(ds) == RLELossless:
        from pydicom.pixels.decoders import RLELosslessDecoder

        if "pylibjpeg" in RLELosslessDecoder.available_plugins:
            ds.pixel_array_options(decoding_plugin="pylibjpeg")   # bounded output (see top)
    try:
        arr = ds.pixel_array
    except BaseException as exc:  # decoders raise many types; all mean "cannot decode"
        if not _decoder_failure(exc):
            raise
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown") if hasattr(
            ds, "file_meta") else "unknown"
        name = getattr(syntax, "name", syntax)
        raise _fail(source, f"not a readable image: corrupt DICOM file, cannot decode pixel "
                    f"data ({name}): {short_reason(exc)}", "unreadable_image") from None
    bits = int(ds.BitsStored)
    if arr.dtype.kind == "u" and bits < arr.dtype.itemsize * 8:
        arr = arr & np.asarray((1 << bits) - 1, dtype=arr.dtype)
    return arr


def _decoder_failure(exc: BaseException) -> bool:
    """Any exception, or the panic of a Rust decoder: pylibjpeg-rle panics on some corrupt RLE
    frames, and pyo3's PanicException derives from BaseException, so `except Exception` (ours,
    and pydicom's around each plugin) let it end the request, or the whole `msk score` run."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


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
