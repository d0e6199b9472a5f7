"""Read one radiograph (a path, bytes, an open binary file or an array) as uint8 [H, W].

The order of the checks is the point: everything that can be refused without decoding is refused
first, so a hostile or careless input costs nothing.

1. The input itself: `stat` names a missing file, a folder, a FIFO, a socket, a device or a
   symbolic-link loop as what it is, and refuses a file over `MAX_IMAGE_BYTES` without reading
   it (a 3 GB sparse file is never read); bytes and open files are held to the same limit.
2. The format, from the content (magic numbers, never the name): PNG, JPEG, TIFF, BMP, PGM/PPM,
   or DICOM (with the 128-byte "DICM" preamble, or without it as old/raw objects are written).
3. The header: one frame only (animated PNG, multi-page TIFF, multi-frame DICOM), width x height
   within `MAX_IMAGE_PIXELS` and `MIN_IMAGE_SIDE`, a valid DICOM rescale and bit fields. What is
   compressed is never expanded on trust: PNG/TIFF/JPEG dimensions come from the header Pillow
   reads at open (its decoders write into a buffer of that size), a Deflated DICOM data set is
   inflated with a cap of `MAX_IMAGE_BYTES`, and compressed DICOM pixel data is held to the
   limits by its declared size and its codestream's own frame header (`msk.imaging.dicom`).
4. Decoding, then: non-finite pixels (float TIFF NaN/Inf) refused, windowing to uint8
   (`msk.imaging.window.to_uint8`; DICOM through its VOI display pipeline).

Every failure is a `RadiographError` whose message starts with the input's name.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from pydicom import Dataset

from msk.constants import DICOM_SUFFIXES, IMAGE_SUFFIXES, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from msk.imaging.dicom import check_size, dataset_to_grayscale, read_dataset
from msk.imaging.errors import RadiographError, format_bytes, short_reason
from msk.imaging.window import to_uint8

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | IO[bytes] | np.ndarray

RASTER_FORMATS: dict[str, tuple[bytes, ...]] = {
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "JPEG": (b"\xff\xd8\xff",),
    "TIFF": (b"II*\x00", b"MM\x00*"),
    "BMP": (b"BM",),
    "PPM": tuple(b"P" + bytes([d]) + w for d in b"123456" for w in (b"\n", b" ", b"\r", b"\t")),
}
"""Raster formats the reader decodes (with Pillow, restricted to the detected format)."""

SUPPORTED = "PNG, JPEG, TIFF, BMP, PGM/PPM or DICOM"

_UNSUPPORTED: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"%PDF", "PDF"), (b"PK\x03\x04", "ZIP"),
    (b"RIFF", "RIFF/WebP"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51",
                                                                    "JPEG 2000"),
    (b"\x1f\x8b", "gzip"),
)
"""Formats recognised only to say what they are (GIF: palette colour, never a radiograph)."""

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError,
                  TypeError, ZeroDivisionError)
"""What Pillow's decoders raise on corrupt or truncated data (all mean "corrupt file")."""

_PIL_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


@dataclass(frozen=True)
class Radiograph:
    """What every pipeline gets from a file: uint8 [H, W] pixels (C-contiguous, what is sent to
    Triton), the input's name, the detected format and, for DICOM, the parsed header (routing
    reads the body part from it)."""

    pixels: np.ndarray
    source: str
    format: str
    dataset: Any = None


def describe(source: object, name: str | None = None) -> str:
    """The input's name in messages: the given name, a path, an open file's name, or a plain
    description; never a Python repr like `<_io.BytesIO object at 0x...>`."""
    if name:
        return str(name)
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    file_name = getattr(source, "name", None)
    if isinstance(file_name, str) and file_name:
        return file_name
    if isinstance(source, np.ndarray):
        return "image array"
    return "image data"


def read_radiograph(source: ImageSource, name: str | None = None) -> Radiograph:
    """Read one input through every check; raise `RadiographError` naming it if it fails."""
    label = describe(source, name)
    if isinstance(source, np.ndarray):
        return Radiograph(from_array(source, label), label, "array")
    data = _read_bytes(source, label)
    kind = sniff(data, label)
    if kind == "DICOM":
        ds = read_dataset(data, label)
        pixels = dataset_to_grayscale(ds, label)
        if "PixelData" in ds:
            del ds.PixelData     # the header is kept for routing, not a second copy of pixels
        return Radiograph(check_pixels(pixels, label), label, kind, ds)
    return Radiograph(_decode_raster(data, kind, label), label, kind)


def load_grayscale(source: ImageSource, name: str | None = None) -> np.ndarray:
    """`read_radiograph(source, name).pixels`: the uint8 [H, W] image alone."""
    return read_radiograph(source, name).pixels


def read_dicom(source: str | os.PathLike | bytes, name: str | None = None,
               stop_before_pixels: bool = False) -> Dataset:
    """A DICOM file or bytes parsed under the reader's limits (file size, capped inflation of a
    Deflated data set), for callers that keep the data set itself, e.g. to route it before
    `dataset_to_grayscale`; `pydicom.dcmread` would inflate a 1.5 MB file to 1.5 GB."""
    label = describe(source, name)
    ds = read_dataset(_read_bytes(source, label), label, stop_before_pixels)
    if isinstance(source, str | os.PathLike):
        ds.filename = os.fspath(source)
    return ds


# -- 1. the input ----------------------------------------------------------------------------
def _read_bytes(source: ImageSource, label: str) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        data = source if isinstance(source, bytes) else bytes(source)
    elif isinstance(source, str | os.PathLike):
        data = _read_path(Path(source), label)
    elif hasattr(source, "read"):
        try:
            data = source.read(MAX_IMAGE_BYTES + 1)
        except OSError as exc:
            raise RadiographError(label, "unreadable_file",
                                  f"cannot read ({exc.strerror or exc})") from None
        if not isinstance(data, bytes | bytearray):
            raise RadiographError(label, "unsupported_image", "not a binary file")
        data = bytes(data)
    else:
        raise RadiographError(label, "unsupported_image",
                              f"expected a path, bytes or a binary file, got "
                              f"{type(source).__name__}")
    check_file_size(len(data), label, at_least=hasattr(source, "read"))
    if not data:
        raise RadiographError(label, "empty_file", "the file is empty")
    return data


def check_file_size(size: int, label: str, at_least: bool = False) -> None:
    """Refuse more than `MAX_IMAGE_BYTES`; `at_least` when only a prefix was read."""
    if size > MAX_IMAGE_BYTES:
        real = f"more than {format_bytes(MAX_IMAGE_BYTES)}" if at_least else format_bytes(size)
        raise RadiographError(label, "file_too_large",
                              f"file is {real}; the limit is {format_bytes(MAX_IMAGE_BYTES)}")


def stat_input(path: Path, label: str | None = None) -> os.stat_result:
    """`stat` a path and refuse what is not a regular file of an allowed size, naming it."""
    label = label or str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise RadiographError(label, "input_not_found",
                                  "broken symbolic link (its target does not exist)") from None
        raise RadiographError(label, "input_not_found", "no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RadiographError(label, "not_a_file", "symbolic link loop") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise RadiographError(label, "unreadable_file", "permission denied") from None
        raise RadiographError(label, "unreadable_file",
                              f"cannot read ({exc.strerror or exc})") from None
    mode = st.st_mode
    if not stat.S_ISREG(mode):
        what = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a device" if
                stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise RadiographError(label, "not_a_file", f"is {what}, not an image file")
    check_file_size(st.st_size, label)
    if st.st_size == 0:
        raise RadiographError(label, "empty_file", "the file is empty")
    return st


def _read_path(path: Path, label: str) -> bytes:
    stat_input(path, label)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_IMAGE_BYTES + 1)   # the file may have grown since stat
    except OSError as exc:
        raise RadiographError(label, "unreadable_file",
                              f"cannot read ({exc.strerror or exc})") from None
    return data


# -- 2. the format ---------------------------------------------------------------------------
def looks_like_dicom(data: bytes) -> bool:
    """DICOM Part 10 ("DICM" after the 128-byte preamble), or a preamble-less object starting
    with a group 0002/0008 element (explicit or implicit VR little endian)."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    if len(data) < 8 or data[0:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    element = int.from_bytes(data[2:4], "little")
    vr = data[4:6]
    return element < 0x0100 and (vr.isalpha() and vr.isupper() or
                                 int.from_bytes(data[4:8], "little") < len(data))


def sniff(data: bytes, label: str) -> str:
    """The format of `data` from its content: a key of `RASTER_FORMATS` or "DICOM".

    A DICOM preamble is looked at first: it may itself hold a TIFF header (dual-format files).
    """
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "DICOM"
    for kind, magics in RASTER_FORMATS.items():
        if data.startswith(magics):
            return kind
    if looks_like_dicom(data):
        return "DICOM"
    for magic, kind in _UNSUPPORTED:
        if data.startswith(magic):
            raise RadiographError(label, "unreadable_image", f"not a readable image: "
                                  f"unsupported format ({kind}); expected {SUPPORTED}")
    suffix = Path(label).suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return "DICOM"   # named DICOM but unrecognised: the DICOM parser says what is wrong
    if suffix in IMAGE_SUFFIXES:
        raise RadiographError(label, "unreadable_image",
                              f"not a readable image: unsupported format (named {suffix} but "
                              f"the content is not {SUPPORTED}; corrupt or mislabelled)")
    raise RadiographError(label, "unreadable_image",
                          f"not a readable image: unsupported format; expected {SUPPORTED}")


# -- 3./4. raster header and decoding --------------------------------------------------------
def _decode_raster(data: bytes, kind: str, label: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    corrupt = f"not a readable image: corrupt {kind if kind != 'PPM' else 'PGM/PPM'} file"
    try:
        with warnings.catch_warnings():
            # The size is checked below against our own limit, with our own message.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[kind])
    except Image.DecompressionBombError as exc:
        # Pillow's own guard (far above ours) fired while opening: report its count, our limit.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else "far more pixels than allowed"
        raise RadiographError(label, "image_too_large", f"image is {size}, too large; the "
                              f"limit is {MAX_IMAGE_PIXELS:,} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, ImportError, EOFError,
            struct.error, IndexError, KeyError, TypeError, ZeroDivisionError) as exc:
        # Pillow's plugins raise all of these on malformed headers. ImportError: Ultralytics, when
        # imported in the same process, patches PIL.Image.open to import an optional HEIF plugin
        # for files PIL cannot identify.
        raise RadiographError(label, "unreadable_image",
                              f"{corrupt} ({short_reason(exc)})") from None
    with image:
        width, height = image.size
        check_size(height, width, label)
        try:
            frames = int(getattr(image, "n_frames", 1))
        except _DECODE_ERRORS as exc:
            raise RadiographError(label, "unreadable_image",
                                  f"{corrupt} ({short_reason(exc)})") from None
        if frames > 1:
            raise RadiographError(label, "multi_frame",
                                  f"{kind} with {frames} frames (animated or multi-page) is not "
                                  "supported: the models score single-frame radiographs")
        try:
            image.load()
            pixels = _pil_pixels(image)
        except _DECODE_ERRORS as exc:
            raise RadiographError(label, "unreadable_image",
                                  f"{corrupt} ({short_reason(exc)})") from None
    return from_array(pixels, label)


def _pil_pixels(image: Any) -> np.ndarray:
    """Pillow image -> array keeping the bit depth (grayscale) or luma-converted (colour)."""
    if image.mode == "L" or image.mode in _PIL_DEPTH_MODES:
        return np.asarray(image)
    return np.asarray(image.convert("L"))   # 1, RGB(A), LA, P (palette), CMYK: BT.601 luma


def from_array(array: np.ndarray, label: str = "image array") -> np.ndarray:
    """Any 2-D grayscale (or HxWx3/4 colour) numeric array -> checked uint8 [H, W]: the same
    rules as files (size limits, finite values), windowed by `to_uint8`."""
    if not isinstance(array, np.ndarray):
        raise RadiographError(label, "unsupported_image",
                              f"expected a numpy array, got {type(array).__name__}")
    arr = array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise RadiographError(label, "unsupported_image",
                              f"expected a 2-D grayscale image, got shape {list(array.shape)}")
    if arr.dtype.kind not in "uifb":
        raise RadiographError(label, "unsupported_image",
                              f"expected numeric pixels, got {arr.dtype}")
    check_size(arr.shape[0], arr.shape[1], label)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise RadiographError(label, "non_finite_pixels",
                              f"{bad:,} pixels are NaN or infinite; a radiograph has finite "
                              "values")
    return check_pixels(to_uint8(arr), label)


def check_pixels(image: np.ndarray, label: str = "image array") -> np.ndarray:
    """The final contract of every image sent to Triton: uint8, 2-D, allowed size, contiguous."""
    if not isinstance(image, np.ndarray):
        raise RadiographError(label, "unsupported_image",
                              f"expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 2:
        raise RadiographError(label, "unsupported_image",
                              f"expected uint8 [H, W] pixels, got {image.dtype} with shape "
                              f"{list(image.shape)}")
    check_size(image.shape[0], image.shape[1], label)
    return np.ascontiguousarray(image)
