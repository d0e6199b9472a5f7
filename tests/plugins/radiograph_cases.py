"""The bad-input matrix of the radiograph reader, as files on disk.

Each `Case` writes one input into a folder and says what every entry point must answer: the
reader's `reason` code and a phrase of its message (the real size and the limit, the format, what
the path is). `tests/test_radiograph_limits.py` runs the same matrix through the reader, `msk
score`, `msk detect` and the web app's upload endpoint. No case decodes a large image: the size
cases only claim their size in a header (and the 3 GB file is sparse), which is the point.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msk.constants import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE


def _gradient(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return ((xx * 7 + yy * 3) % 256).astype(np.uint8)


def _save(path: Path, image: Image.Image, fmt: str, **kw) -> None:
    image.save(path, format=fmt, **kw)


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR claims width x height with no pixels behind it: only a reader that looks
    at the header before decoding answers it cheaply."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _png(height: int, width: int) -> Callable[[Path], None]:
    return lambda p: _save(p, Image.fromarray(_gradient(height, width)), "PNG")


def _float_tiff(value: float) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        pixels = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
        pixels[10, 10:20] = value
        _save(path, Image.fromarray(pixels, mode="F"), "TIFF")
    return write


def _multi_page_tiff(path: Path) -> None:
    pages = [Image.fromarray(_gradient(64, 64) // (i + 1)) for i in range(3)]
    pages[0].save(path, format="TIFF", save_all=True, append_images=pages[1:])


def _animated_png(path: Path) -> None:
    frames = [Image.fromarray(_gradient(64, 64) // (i + 1)) for i in range(2)]
    frames[0].save(path, format="PNG", save_all=True, append_images=frames[1:])


def _animated_gif(path: Path) -> None:
    frames = [Image.fromarray(_gradient(64, 64) // (i + 1)) for i in range(2)]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:])


def _dicom(path: Path, **attrs) -> Path:
    from pydicom import dcmread

    from msk.samples import write_dicom_sample

    write_dicom_sample(path, np.tile(np.arange(0, 4096, 32, dtype=np.uint16), (96, 1)))
    if attrs:
        ds = dcmread(path)
        for key, value in attrs.items():
            setattr(ds, key, value)
        ds.save_as(path, enforce_file_format=True)
    return path


def _multi_frame_dicom(path: Path) -> None:
    from pydicom import dcmread

    _dicom(path)
    ds = dcmread(path)
    frames = np.stack([ds.pixel_array] * 3)
    ds.NumberOfFrames = 3
    ds.PixelData = frames.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _dicom_without_preamble(path: Path) -> None:
    tmp = path.with_name(path.name + ".part10")
    _dicom(tmp)
    path.write_bytes(tmp.read_bytes()[132:])   # starts with the (0002,0000) element
    tmp.unlink()


def _sparse(size: int) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with open(path, "wb") as handle:
            handle.write(b"\x89PNG\r\n\x1a\n")
            handle.truncate(size)
    return write


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _loop(path: Path) -> None:
    os.symlink(path.name, path)      # a link to itself: ELOOP


@dataclass(frozen=True)
class Case:
    """One input and the answer every entry point must give (reason None = scored)."""

    name: str
    write: Callable[[Path], None]
    reason: str | None
    phrases: tuple[str, ...] = ()
    on_disk_only: bool = False       # a FIFO, a link or a 3 GB file cannot be uploaded

    def path(self, folder: Path) -> Path:
        return folder / self.name


CASES: tuple[Case, ...] = (
    # minimum size (MIN_IMAGE_SIDE) - one rule everywhere
    Case("one_pixel.png", _png(1, 1), "image_too_small", ("1 x 1 pixels", f"{MIN_IMAGE_SIDE}")),
    Case("five.png", _png(5, 5), "image_too_small", ("5 x 5 pixels",)),
    Case("eight.png", _png(8, 8), "image_too_small", ("8 x 8 pixels",)),
    Case("strip.png", _png(1, 5000), "image_too_small", ("5000 x 1 pixels",)),
    Case("almost.png", _png(31, 400), "image_too_small", ("400 x 31 pixels",)),
    Case("smallest.png", _png(MIN_IMAGE_SIDE, MIN_IMAGE_SIDE), None),
    # maximum pixel count (from the header, nothing decoded)
    Case("bomb.png", lambda p: png_header_only(p, 20000, 20000), "image_too_large",
         ("400,000,000 pixels", f"{MAX_IMAGE_PIXELS:,}")),
    Case("large.png", lambda p: png_header_only(p, 6000, 6000), "image_too_large",
         ("6000 x 6000 pixels (36,000,000)", f"{MAX_IMAGE_PIXELS:,}")),
    # maximum file size (from stat: the sparse file is never read)
    Case("sparse_3gb.png", _sparse(3 * 2**30), "file_too_large",
         ("3.0 GiB (3221225472 bytes)", f"{MAX_IMAGE_BYTES // 2**20}.0 MiB"), on_disk_only=True),
    # non-finite pixels
    Case("nan.tiff", _float_tiff(float("nan")), "non_finite_pixels", ("NaN or infinite",)),
    Case("inf.tif", _float_tiff(float("inf")), "non_finite_pixels", ("NaN or infinite",)),
    # multi-frame files of any format
    Case("pages.tiff", _multi_page_tiff, "multi_frame", ("3 frames",)),
    Case("animated.png", _animated_png, "multi_frame", ("2 frames",)),
    Case("animated.gif", _animated_gif, "unreadable_image", ("unsupported format (GIF)",)),
    Case("frames.dcm", _multi_frame_dicom, "multi_frame", ("3 frames",)),
    # DICOM header values
    Case("slope0.dcm", lambda p: _dicom(p, RescaleSlope="0"), "invalid_rescale",
         ("RescaleSlope 0",)),
    Case("no_preamble", _dicom_without_preamble, None),
    # what the path is
    Case("pipe.png", _fifo, "not_a_file", ("FIFO",), on_disk_only=True),
    Case("loop.png", _loop, "not_a_file", ("symbolic link loop",), on_disk_only=True),
    # plain bad files
    Case("empty.png", lambda p: p.write_bytes(b""), "empty_file", ("empty",)),
    Case("truncated.png", lambda p: p.write_bytes(_png_bytes()[:2000]), "unreadable_image",
         ("corrupt PNG",)),
)


def _png_bytes() -> bytes:
    """A noisy PNG (several KB, so a prefix of it is really truncated)."""
    noise = np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    return buf.getvalue()


def write_cases(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        case.write(case.path(folder))
    return {case.name: case.path(folder) for case in CASES}


@pytest.fixture(scope="session")
def radiograph_cases(tmp_path_factory) -> dict[str, Path]:
    """Every `CASES` input written once into a fresh folder: name -> path."""
    return write_cases(tmp_path_factory.mktemp("radiograph_cases"))
