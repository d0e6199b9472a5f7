"""Compressed inputs are held to the reader's limits before they expand, at every door.

A 1.5 MB DICOM with the Deflated transfer syntax inflated to 1.5 GB in `msk score`, the web app
and STOW-RS; a JPEG frame whose own header claims more than Rows/Columns decoded to gigabytes.
Every bomb here is a real file: written by pydicom with the Deflated transfer syntax (its pixel
data twice the reader's file limit), a real JPEG / JPEG 2000 codestream whose frame header was
made to claim more, a PNG whose IDAT really inflates to what its IHDR declares, a deflate TIFF
written by Pillow. Peak memory is read in the process that does the work (VmHWM, reset first
through /proc/PID/clear_refs) - never time.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless

from msk.constants import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from msk.imaging import (
    RadiographError,
    dataset_to_grayscale,
    format_bytes,
    load_grayscale,
    read_dicom,
    read_radiograph,
)
from msk.samples import write_dicom_sample

ROOT = Path(__file__).resolve().parent.parent
BOMB_PIXEL_BYTES = 2 * MAX_IMAGE_BYTES
"""Pixel data of the deflated bomb: it inflates to twice the limit (from about 130 KB)."""
SMALL_GROWTH = MAX_IMAGE_BYTES // 4
"""What refusing a bomb may add to a process's peak: a fraction of the one-file cap (pydicom
inflating the bomb added more than 4 x BOMB_PIXEL_BYTES)."""
EXPANDS = "expands beyond the limit"


# -- files -----------------------------------------------------------------------------------
def write_deflated(path: Path, pixel_bytes: bytes | None = None,
                   pixels: np.ndarray | None = None) -> Path:
    """A CR instance written by pydicom with the Deflated Explicit VR Little Endian syntax;
    `pixel_bytes` replaces the 64 x 64 image's pixel data (a bomb keeps the small header)."""
    write_dicom_sample(path, np.zeros((64, 64), np.uint16) if pixels is None else pixels)
    ds = dcmread(path)
    if pixel_bytes is not None:
        ds.PixelData = pixel_bytes
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def deflated_bomb(tmp_path_factory) -> Path:
    path = write_deflated(tmp_path_factory.mktemp("bomb") / "bomb.dcm", bytes(BOMB_PIXEL_BYTES))
    assert path.stat().st_size < BOMB_PIXEL_BYTES // 500       # ~130 KB for 128 MiB
    assert dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID.is_deflated
    return path


@pytest.fixture(scope="module")
def small_dicom(tmp_path_factory) -> Path:
    return write_dicom_sample(tmp_path_factory.mktemp("small") / "small.dcm",
                              np.tile(np.arange(0, 4096, 32, dtype=np.uint16), (96, 1)))


def encapsulated(path: Path, frame: bytes, syntax: str, **attrs) -> Path:
    """An 8-bit single-frame instance holding `frame` as its encapsulated pixel data."""
    write_dicom_sample(path, np.zeros((64, 64), np.uint16))
    ds = dcmread(path)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real 64 x 64 baseline JPEG (Pillow) whose SOF0 was made to claim width x height."""
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64), 100, np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def png_bomb(path: Path, width: int, height: int) -> Path:
    """A grayscale PNG whose IDAT really inflates to what its IHDR declares (no filter, zeros),
    compressed a block of rows at a time."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    compressor = zlib.compressobj(9)
    rows = bytes(width + 1) * 256
    idat = b"".join(compressor.compress(rows) for _ in range(height // 256))
    idat += compressor.compress(bytes(width + 1) * (height % 256)) + compressor.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


# -- peak memory of a process ----------------------------------------------------------------
def reset_peak(pid: int | str = "self") -> int:
    """Reset the process's peak RSS (VmHWM) to its current RSS; return that RSS in bytes."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status_bytes(pid, "VmRSS")


def peak(pid: int | str = "self") -> int:
    return _status_bytes(pid, "VmHWM")


def _status_bytes(pid: int | str, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


READ_PROBE = """
import json, sys
from pathlib import Path
from msk.imaging import RadiographError, read_radiograph
from tests.test_decompression_limits import peak, reset_peak
read_radiograph(sys.argv[2])                 # imports and first-use allocations, not measured
before = reset_peak()
try:
    shape, reason, message = list(read_radiograph(sys.argv[1]).pixels.shape), None, None
except RadiographError as exc:
    shape, reason, message = None, exc.reason, str(exc)
print(json.dumps({"shape": shape, "reason": reason, "message": message,
                  "growth": peak() - before}))
"""


def read_in_a_process(path: Path, warm_up: Path) -> dict:
    """`read_radiograph(path)` in a fresh process: its answer and how much its peak RSS grew."""
    proc = subprocess.run([sys.executable, "-c", READ_PROBE, str(path), str(warm_up)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


# -- the reader ------------------------------------------------------------------------------
def test_deflated_bomb_is_refused_before_it_inflates(deflated_bomb, small_dicom) -> None:
    result = read_in_a_process(deflated_bomb, small_dicom)
    assert result["reason"] == "file_too_large", result
    message = result["message"]
    assert message.startswith(f"{deflated_bomb}: deflated DICOM data {EXPANDS}"), message
    assert f"inflate to more than {format_bytes(MAX_IMAGE_BYTES)}" in message
    assert result["growth"] < SMALL_GROWTH, result
    # the same answer for bytes and open files (uploads), named by the given name
    data = deflated_bomb.read_bytes()
    for source, name in ((data, "upload.dcm"), (io.BytesIO(data), "spooled.dcm")):
        with pytest.raises(RadiographError, match=EXPANDS) as info:
            read_radiograph(source, name)
        assert info.value.reason == "file_too_large"
        assert str(info.value).startswith(f"{name}: ")


def test_deflated_radiographs_read_like_uncompressed_ones(tmp_path: Path) -> None:
    """A real CR radiograph (pydicom-data, 1760 x 1760, MONOCHROME1) saved Deflated by pydicom:
    the same pixels as the original; a truncated copy is a corrupt file, named."""
    from tests.plugins.pacs import real_radiograph

    ds = dcmread(real_radiograph())
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated = tmp_path / "deflated.dcm"
    ds.save_as(deflated, enforce_file_format=True)
    assert deflated.stat().st_size < real_radiograph().stat().st_size
    rad = read_radiograph(deflated)
    np.testing.assert_array_equal(rad.pixels, load_grayscale(real_radiograph()))
    assert rad.dataset.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert rad.dataset.BodyPartExamined == ds.BodyPartExamined       # routing reads it
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(deflated.read_bytes()[:-5000])
    with pytest.raises(RadiographError, match="truncated") as info:
        read_radiograph(cut)
    assert info.value.reason == "unreadable_image" and str(info.value).startswith(str(cut))


def test_a_deflated_data_set_holding_more_frames_than_it_declares(tmp_path: Path) -> None:
    """Inflated within the limit, but three 64 x 64 frames under a header that declares one:
    pydicom returned all three and they were scored as a 64 x 192 'colour' image."""
    path = write_deflated(tmp_path / "frames.dcm", bytes(3 * 64 * 64 * 2))
    with pytest.raises(RadiographError, match="holds 3 frames") as info:
        read_radiograph(path)
    assert info.value.reason == "multi_frame"


@pytest.mark.parametrize("name,write,phrases", [
    ("jpeg_claims_30000.dcm",
     lambda p: encapsulated(p, jpeg_claiming(30000, 30000), JPEGBaseline8Bit),
     ("JPEG pixel data " + EXPANDS, "30000 x 30000 pixels (900,000,000)",
      f"{MAX_IMAGE_PIXELS:,} pixels")),
    ("rgb16_5000.dcm",
     lambda p: encapsulated(p, jpeg_claiming(5000, 5000), JPEGBaseline8Bit, Rows=5000,
                            Columns=5000, SamplesPerPixel=3, PhotometricInterpretation="RGB",
                            BitsAllocated=16, BitsStored=16, HighBit=15, PlanarConfiguration=0),
     ("pixel data " + EXPANDS, "5000 x 5000 pixels x 3 sample(s) x 16 bits",
      format_bytes(5000 * 5000 * 6), format_bytes(MAX_IMAGE_BYTES))),
])
def test_compressed_pixel_data_is_held_to_its_declared_size(name, write, phrases, tmp_path,
                                                            small_dicom) -> None:
    """The size a decoder would allocate - from Rows/Columns/SamplesPerPixel/BitsAllocated and
    from the codestream's own frame header - is checked before any decoder runs."""
    path = write(tmp_path / name)
    result = read_in_a_process(path, small_dicom)
    assert result["reason"] == "image_too_large", result
    assert result["message"].startswith(f"{path}: "), result
    for phrase in phrases:
        assert phrase in result["message"], (phrase, result["message"])
    assert result["growth"] < SMALL_GROWTH, result


def test_jpeg_2000_frame_header_is_read_before_decoding(tmp_path: Path) -> None:
    """A real JPEG 2000 radiograph (pydicom-data RG3_J2KR) whose SIZ marker was made to claim
    60000 x 60000: refused from the codestream, the header's Rows/Columns notwithstanding."""
    from tests.plugins.pacs import pydicom_data_file

    source = pydicom_data_file("RG3_J2KR.dcm")
    data = bytearray(source.read_bytes())
    siz = data.index(b"\xff\x4f\xff\x51") + 4
    assert struct.unpack_from(">II", data, siz + 4) == (1760, 1760)
    struct.pack_into(">II", data, siz + 4, 60000, 60000)
    with pytest.raises(RadiographError, match=f"JPEG 2000 pixel data {EXPANDS}") as info:
        read_radiograph(bytes(data), "j2k.dcm")
    assert info.value.reason == "image_too_large" and "60000 x 60000" in str(info.value)
    assert read_radiograph(source).pixels.shape == (1760, 1760)     # the original still reads


def test_rle_segments_never_expand_past_rows_and_columns(tmp_path: Path, small_dicom) -> None:
    """An RLE segment of 2 MiB of 128-byte runs, behind a first segment offset of 68 instead of
    64: pylibjpeg-rle refuses that offset, and pydicom then fell back to its own decoder, which
    expanded the segment to 128 MiB. The reader uses pylibjpeg-rle only (it writes into the
    Rows x Columns buffer and stops there)."""
    header = struct.pack("<16I", 1, 68, *([0] * 14)) + bytes(4)
    path = encapsulated(tmp_path / "rle.dcm", header + b"\x81\x00" * (1 << 20), RLELossless)
    result = read_in_a_process(path, small_dicom)
    assert result["reason"] == "unreadable_image", result
    assert result["message"].startswith(f"{path}: not a readable image: corrupt DICOM file")
    assert result["growth"] < SMALL_GROWTH, result


@pytest.mark.parametrize("allocated,stored,high,phrase", [
    (16, 12, 40, "HighBit 40 does not match BitsStored 12 (it must be 11"),
    (16, 12, 15, "HighBit 15 does not match BitsStored 12"),
    (8, 12, 11, "BitsStored 12 is more than BitsAllocated 8"),
    (12, 12, 11, "BitsAllocated 12 is not one of 1, 8, 16, 32"),
])
def test_bit_fields_are_checked_against_each_other(allocated, stored, high, phrase,
                                                   tmp_path: Path) -> None:
    """Files as pydicom writes them; the gateway's parsed datasets get the same answer."""
    path = write_dicom_sample(tmp_path / "bits.dcm", np.zeros((64, 64), np.uint16))
    ds = dcmread(path)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, stored, high
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(RadiographError, match=re.escape(f"invalid bit fields: {phrase}")) as info:
        read_radiograph(path)
    assert info.value.reason == "unsupported_image"
    assert str(info.value).startswith(f"{path}: ")
    with pytest.raises(RadiographError, match=re.escape(phrase)):
        dataset_to_grayscale(dcmread(path), "1.2.3.4")


def test_consistent_bit_fields_still_read(tmp_path: Path) -> None:
    pixels = np.tile(np.arange(0, 4096, 32, dtype=np.uint16), (64, 1))
    path = write_dicom_sample(tmp_path / "ok.dcm", pixels)        # 16 / 12 / 11
    assert read_radiograph(path).pixels.shape == (64, 128)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_raster_dimensions_are_checked_before_decoding(fmt: str, tmp_path: Path,
                                                       small_dicom) -> None:
    """6000 x 6000 (over MAX_IMAGE_PIXELS, under Pillow's own guard) in a PNG whose IDAT really
    inflates to 36 MB and in a deflate-compressed TIFF written by Pillow: refused from the
    header Pillow reads at open, before a row is decoded."""
    path = tmp_path / f"big.{fmt.lower()}"
    if fmt == "PNG":
        png_bomb(path, 6000, 6000)
    else:
        Image.new("L", (6000, 6000)).save(path, "TIFF", compression="tiff_adobe_deflate")
    assert path.stat().st_size < 1 << 20
    result = read_in_a_process(path, small_dicom)
    assert result["reason"] == "image_too_large", result
    assert "6000 x 6000 pixels (36,000,000)" in result["message"]
    assert result["growth"] < SMALL_GROWTH, result


def test_read_dicom_parses_under_the_same_caps(deflated_bomb, tmp_path: Path) -> None:
    """`read_dicom`, for callers that keep the data set (STOW-RS; the gateway's queue): the
    file's size and the capped inflation, header only if asked, the path as its filename."""
    with pytest.raises(RadiographError, match=EXPANDS) as info:
        read_dicom(deflated_bomb, stop_before_pixels=True)
    assert info.value.reason == "file_too_large"
    path = write_deflated(tmp_path / "ok.dcm", pixels=np.full((64, 64), 7, np.uint16))
    header = read_dicom(path, stop_before_pixels=True)
    assert header.filename == str(path) and "PixelData" not in header
    assert header.Rows == 64 and header.file_meta.TransferSyntaxUID.is_deflated
    assert read_dicom(path.read_bytes(), "bytes.dcm").PixelData == \
        np.full((64, 64), 7, np.uint16).tobytes()


@pytest.mark.filterwarnings("ignore::UserWarning")       # pydicom on the mangled values
def test_mangled_compressed_files_only_ever_raise_the_one_error(tmp_path: Path) -> None:
    """Deterministic mutations of a deflated, a JPEG-encapsulated and an RLE DICOM: pixels or a
    `RadiographError` naming the input, nothing else (zlib, codestream and fragment parsers)."""
    import random

    pixels = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (64, 1))
    rle = write_dicom_sample(tmp_path / "rle.dcm", pixels)
    ds = dcmread(rle)
    ds.compress(RLELossless)
    ds.save_as(rle, enforce_file_format=True)
    seeds = [write_deflated(tmp_path / "d.dcm", pixels=pixels).read_bytes(), rle.read_bytes(),
             encapsulated(tmp_path / "j.dcm", jpeg_claiming(64, 64), JPEGBaseline8Bit
                          ).read_bytes()]
    rng = random.Random(0)
    for _ in range(300):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            where = rng.randrange(132, len(data))     # past the preamble: the parsers' input
            if rng.random() < 0.7:
                data[where] = rng.randrange(256)
            else:
                del data[where:where + rng.randint(1, 64)]
        try:
            read_radiograph(bytes(data), "mangled.dcm")
        except RadiographError as exc:
            assert str(exc).startswith("mangled.dcm: ") and "object at 0x" not in str(exc)


# -- msk score -------------------------------------------------------------------------------
def _msk_score(path: Path, url: str, tmp_path: Path) -> tuple[dict, int]:
    """`msk score PATH` as a process: its one row and its peak RSS (from wait4)."""
    out, err = tmp_path / f"{path.name}.out", tmp_path / f"{path.name}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "msk.cli", "score", str(path), "--url",
                                 url, "--no-progress", "--wait", "60"],
                                stdout=stdout, stderr=stderr, cwd=ROOT)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            proc.returncode = -1          # reaped here: Popen must not wait for it again
    assert os.waitstatus_to_exitcode(status) in (0, 1), err.read_text()[-2000:]
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    return row, usage.ru_maxrss * 1024


def test_msk_score_refuses_the_bomb_within_the_cap(tiny_triton, deflated_bomb, small_dicom,
                                                   tmp_path: Path) -> None:
    good, good_peak = _msk_score(small_dicom, tiny_triton.grpc_url, tmp_path)
    assert good["error"] is None, good
    bad, bad_peak = _msk_score(deflated_bomb, tiny_triton.grpc_url, tmp_path)
    assert bad["error_reason"] == "file_too_large" and bad["probability"] is None, bad
    assert bad["error"].startswith(f"{deflated_bomb}: deflated DICOM data {EXPANDS}"), bad
    assert bad_peak - good_peak < SMALL_GROWTH, (bad_peak, good_peak)


# -- the web app -----------------------------------------------------------------------------
def test_web_upload_of_several_bombs_stays_within_one_files_cap(web_app_server_down,
                                                                deflated_bomb) -> None:
    """Three bombs in one upload (each 128 MiB inflated) against the real `msk web` process:
    every one refused by name, and the process's peak grows by less than one file's cap (it
    was 12 GB for three 1.5 GB bombs)."""
    app = web_app_server_down
    data = deflated_bomb.read_bytes()
    names = ["a.dcm", "b.dcm", "c.dcm"]
    before = reset_peak(app.pid)
    response = requests.post(f"{app.url}/api/score", timeout=120,
                             files=[("files", (name, data)) for name in names])
    growth = peak(app.pid) - before
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    assert [im["filename"] for im in images] == names
    for name, image in zip(names, images, strict=True):
        assert image["error_reason"] == "file_too_large", image
        assert image["error"].startswith(f"{name}: deflated DICOM data {EXPANDS}"), image
    assert growth < MAX_IMAGE_BYTES, growth
    assert "Traceback" not in app.log.read_text(errors="replace")


# -- STOW-RS ---------------------------------------------------------------------------------
STOW_SERVER = """
import sys
from clients.gateway.config import GatewayConfig
from clients.gateway.queue import StudyQueue
from clients.gateway.stow_in import StowServer
config = GatewayConfig("127.0.0.1:1", "PACS@127.0.0.1:104", data_dir=sys.argv[1],
                       allowed_calling_aes=["PACS"], dicomweb_port=int(sys.argv[2]))
queue = StudyQueue(config.data_dir)
server = StowServer(config, queue)
server.start()
print("ready", flush=True)
sys.stdin.read()                      # until the test closes our stdin
server.stop()
queue.close()
"""
TOKEN = "t-" + "7" * 30


@pytest.fixture()
def stow_process(tmp_path: Path) -> Iterator[tuple[int, str, Path]]:
    """A STOW-RS receiver in its own process (its memory is its own): (pid, URL, queue dir)."""
    from server.launcher import free_port

    port, queue = free_port(), tmp_path / "queue"
    proc = subprocess.Popen([sys.executable, "-c", STOW_SERVER, str(queue), str(port)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
                            env={**os.environ, "MSK_GATEWAY_STOW_TOKENS": TOKEN}, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield proc.pid, f"http://127.0.0.1:{port}/dicomweb/studies", queue
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


def multipart_body(payloads: list[bytes], boundary: str = "msk-b0undary") -> tuple[bytes, dict]:
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p
                    + b"\r\n" for p in payloads) + f"--{boundary}--\r\n".encode()
    return body, {"Authorization": f"Bearer {TOKEN}",
                  "Content-Type": f'multipart/related; type="application/dicom"; '
                                  f'boundary={boundary}'}


def test_stow_refuses_deflated_bombs_within_the_cap(stow_process, deflated_bomb,
                                                    tmp_path: Path) -> None:
    from tests.plugins.pacs import SyntheticPatient, make_study

    pid, url, queue = stow_process
    (good,) = make_study(tmp_path / "s", SyntheticPatient("Stow^Bomb", "STOW-0101"), ["WRIST"])
    body, headers = multipart_body([deflated_bomb.read_bytes()] * 3 + [good.read_bytes()])
    before = reset_peak(pid)
    response = requests.post(url, data=body, headers=headers, timeout=120)
    growth = peak(pid) - before
    assert response.status_code == 202, response.text
    answer = response.json()
    assert len(answer["00081199"]["Value"]) == 1                 # the radiograph: stored
    failed = answer["00081198"]["Value"]
    assert [f["00081197"]["Value"] for f in failed] == [[0xA700]] * 3   # out of resources
    assert len(list((queue / "incoming").glob("*/*.dcm"))) == 1
    assert growth < SMALL_GROWTH, growth


def test_stow_streams_the_body_to_disk_one_instance_at_a_time(stow_process,
                                                              tmp_path: Path) -> None:
    """Four 12 MiB instances in one 48 MiB request: the receiver's peak grows by about one
    instance, never by the body (it used to hold the body and the email parser's copies)."""
    pid, url, queue = stow_process
    payloads = []
    for i in range(4):
        path = write_dicom_sample(tmp_path / f"big{i}.dcm",
                                  np.full((2510, 2510), 100 + i, np.uint16))
        payloads.append(path.read_bytes())
    body, headers = multipart_body(payloads)
    assert len(body) > 4 * 12 * 2**20
    before = reset_peak(pid)
    response = requests.post(url, data=body, headers=headers, timeout=120)
    growth = peak(pid) - before
    assert response.status_code == 200, response.text
    assert len(response.json()["00081199"]["Value"]) == 4
    stored = sorted((queue / "incoming").glob("*/*.dcm"))
    assert sorted(p.read_bytes() for p in stored) == sorted(payloads)      # byte for byte
    assert growth < len(body) // 2, (growth, len(body))
