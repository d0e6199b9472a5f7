"""One reader, one set of limits, the same answer at every entry point.

The matrix of `tests/plugins/radiograph_cases.py` goes through the reader itself, then through
`msk score` and `msk detect` as subprocesses against the real tritonserver (tiny MURA and CI wrist
repositories), and through the web app's upload endpoint: each bad input gets the same reason code
and a message naming it with the real size and the limit; the good ones are scored.
"""

from __future__ import annotations

import http.client
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from msk.constants import (
    IMAGE_SUFFIXES,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    MAX_UPLOAD_REQUEST_BYTES,
    MIN_IMAGE_SIDE,
)
from msk.imaging import REASONS, RadiographError, dataset_to_grayscale, read_radiograph
from tests.plugins.radiograph_cases import CASES, Case

ROOT = Path(__file__).resolve().parent.parent
REPR = "object at 0x"
BAD = [c for c in CASES if c.reason]
GOOD = [c for c in CASES if not c.reason]
UPLOADABLE = [c for c in CASES if not c.on_disk_only]


def _ids(cases: list[Case]) -> list[str]:
    return [c.name for c in cases]


def _check_message(message: str, name: str, case: Case) -> None:
    assert message.startswith(name), message
    for phrase in case.phrases:
        assert phrase in message, (phrase, message)
    assert REPR not in message and "Traceback" not in message, message


def _rchar() -> int:
    """Bytes this process has read through read() calls so far (Linux /proc)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


# -- the reader --------------------------------------------------------------------------------
@pytest.mark.timeout(60)   # a reader that opened the FIFO would block here forever
@pytest.mark.parametrize("case", BAD, ids=_ids(BAD))
def test_reader_refuses_with_reason_and_name(case: Case, radiograph_cases) -> None:
    path = radiograph_cases[case.name]
    before = _rchar()
    with pytest.raises(RadiographError) as info:
        read_radiograph(path)
    read = _rchar() - before
    assert info.value.reason == case.reason, str(info.value)
    assert info.value.reason in REASONS
    _check_message(str(info.value), str(path), case)
    assert read < 4 * 2**20, f"{read} bytes read to refuse {case.name}"   # header/stat only


@pytest.mark.parametrize("case", GOOD, ids=_ids(GOOD))
def test_reader_accepts_the_good_cases(case: Case, radiograph_cases) -> None:
    image = read_radiograph(radiograph_cases[case.name]).pixels
    assert image.dtype == np.uint8 and image.ndim == 2 and image.flags.c_contiguous
    assert min(image.shape) >= MIN_IMAGE_SIDE and image.max() > image.min()


def test_dicom_without_preamble_reads_like_the_part10_file(radiograph_cases, tmp_path) -> None:
    """Detected by content (no suffix), and the same pixels as the file with its preamble."""
    from tests.plugins.radiograph_cases import _dicom

    raw = read_radiograph(radiograph_cases["no_preamble"])
    full = read_radiograph(_dicom(tmp_path / "full.dcm"))
    assert raw.format == full.format == "DICOM"
    np.testing.assert_array_equal(raw.pixels, full.pixels)


@pytest.mark.parametrize("case", UPLOADABLE, ids=_ids(UPLOADABLE))
def test_bytes_and_open_files_get_the_same_answer(case: Case, radiograph_cases) -> None:
    """In memory the input is named by the name given, else described - never a repr."""
    data = radiograph_cases[case.name].read_bytes()
    for source, name in ((data, "upload.bin"), (io.BytesIO(data), None)):
        if case.reason is None:
            assert read_radiograph(source, name).pixels.ndim == 2
            continue
        with pytest.raises(RadiographError) as info:
            read_radiograph(source, name)
        assert info.value.reason == case.reason
        _check_message(str(info.value), name or "image data", case)


def test_one_limit_for_bytes_in_memory() -> None:
    with pytest.raises(RadiographError, match=r"file is 64\.0 MiB \(67108865 bytes\); the limit "
                                              r"is 64\.0 MiB") as info:
        read_radiograph(b"\x89PNG\r\n\x1a\n" + bytes(MAX_IMAGE_BYTES - 7), "big.png")
    assert info.value.reason == "file_too_large"


def test_gateway_datasets_get_the_same_header_rules() -> None:
    """The gateway hands parsed datasets to `dataset_to_grayscale`: same limits, no decoding."""
    from pydicom import Dataset

    ds = Dataset()
    ds.PixelData = b""                       # never decoded: the header refuses first
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored = 16, 12
    for (rows, cols), reason in (((20000, 20000), "image_too_large"),
                                 ((8, 8), "image_too_small"), ((1, 5000), "image_too_small")):
        ds.Rows, ds.Columns = rows, cols
        with pytest.raises(RadiographError) as info:
            dataset_to_grayscale(ds, "1.2.3.4")
        assert info.value.reason == reason and str(info.value).startswith("1.2.3.4: ")
    ds.Rows = ds.Columns = 64
    ds.RescaleSlope = "0"
    with pytest.raises(RadiographError, match="RescaleSlope 0"):
        dataset_to_grayscale(ds, "1.2.3.4")


def test_limits_are_documented() -> None:
    doc = (ROOT / "docs" / "batch-scoring.md").read_text()
    for value in (f"{MAX_IMAGE_PIXELS:,}", f"{MAX_IMAGE_BYTES // 2**20} MiB", f"{MIN_IMAGE_SIDE}"):
        assert value in doc, value
    for reason in REASONS:
        assert f"`{reason}`" in doc, reason


# -- msk score ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def score_rows(_tiny_triton_session, radiograph_cases) -> dict[str, dict]:
    paths = [str(radiograph_cases[c.name]) for c in CASES]
    proc = subprocess.run([sys.executable, "-m", "msk.cli", "score", *paths, "--url",
                           _tiny_triton_session.grpc_url, "--no-progress", "--wait", "60"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr                  # finished, with error rows
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    return {Path(r["input"]).name: r for r in rows}


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_msk_score_matrix(case: Case, score_rows, radiograph_cases) -> None:
    row = score_rows[case.name]
    if case.reason is None:
        assert row["error"] is None and 0.0 <= row["probability"] <= 1.0, row
        return
    assert row["error_reason"] == case.reason, row
    assert row["probability"] is None
    _check_message(row["error"], str(radiograph_cases[case.name]), case)


# -- msk detect ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def detect_rows(wrist_triton, radiograph_cases, tmp_path_factory) -> dict[str, dict]:
    empty = tmp_path_factory.mktemp("no_images")
    (empty / "notes.txt").write_text("not an image")
    paths = [str(radiograph_cases[c.name]) for c in CASES] + [str(empty)]
    proc = subprocess.run([sys.executable, "-m", "msk.cli", "detect", *paths, "--url",
                           wrist_triton.grpc_url], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 1, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == len(paths), proc.stdout
    return {Path(r["input"]).name: r for r in rows} | {"<empty>": rows[-1]}


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_msk_detect_matrix(case: Case, detect_rows, radiograph_cases) -> None:
    row = detect_rows[case.name]
    if case.reason is None:
        assert row["error"] is None and row["height"] >= MIN_IMAGE_SIDE, row
        return
    _check_message(row["error"], str(radiograph_cases[case.name]), case)


def test_msk_detect_names_a_folder_without_images(detect_rows) -> None:
    row = detect_rows["<empty>"]
    assert row["error"] and "folder holds no images" in row["error"], row
    assert all(s in row["error"] for s in sorted(IMAGE_SUFFIXES))


# -- the web app --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def upload_results(web_app, radiograph_cases) -> dict[str, dict]:
    files = [("files", (c.name, radiograph_cases[c.name].read_bytes())) for c in UPLOADABLE]
    response = requests.post(f"{web_app.url}/api/score", files=files, timeout=300)
    assert response.status_code == 200, response.text
    return {im["filename"]: im for im in response.json()["images"]}


@pytest.mark.parametrize("case", UPLOADABLE, ids=_ids(UPLOADABLE))
def test_web_upload_matrix(case: Case, upload_results) -> None:
    image = upload_results[case.name]
    if case.reason is None:
        assert image["error"] is None and 0.0 <= image["probability"] <= 1.0, image
        return
    _check_message(image["error"], case.name, case)


def test_web_refuses_a_huge_upload_from_its_content_length(web_app) -> None:
    """1 GiB declared, nothing sent: answered 413 at once with the real size and the limit."""
    host, port = web_app.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.putrequest("POST", "/api/score")
        conn.putheader("Content-Type", "multipart/form-data; boundary=x")
        conn.putheader("Content-Length", str(2**30))
        conn.endheaders()
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 413, body
    assert "1.0 GiB (1073741824 bytes)" in body["error"]
    assert f"{MAX_UPLOAD_REQUEST_BYTES // 2**20}.0 MiB" in body["error"]
    assert f"{MAX_IMAGE_BYTES // 2**20}.0 MiB ({MAX_IMAGE_BYTES} bytes) per file" in body["error"]


def test_web_refuses_an_upload_without_a_declared_size(web_app) -> None:
    def chunks():
        yield b"--x\r\n"

    response = requests.post(f"{web_app.url}/api/score", data=chunks(), timeout=60,
                             headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert response.status_code == 411 and "Content-Length" in response.json()["error"]


def test_web_names_a_file_over_the_per_file_limit(web_app) -> None:
    big = b"\x89PNG\r\n\x1a\n" + bytes(MAX_IMAGE_BYTES)
    response = requests.post(f"{web_app.url}/api/score", timeout=300,
                             files=[("files", ("big.png", big))])
    assert response.status_code == 200
    (image,) = response.json()["images"]
    assert image["error"] == (f"big.png: file is 64.0 MiB ({len(big)} bytes); the limit is "
                              f"64.0 MiB ({MAX_IMAGE_BYTES} bytes)")


def test_mangled_files_only_ever_raise_the_one_error(radiograph_cases) -> None:
    """Deterministic mutations (flipped bytes, cuts, insertions) of good PNG/TIFF/DICOM files:
    the reader answers with pixels or a `RadiographError` naming the input, nothing else."""
    import random

    seeds = [radiograph_cases[n].read_bytes() for n in
             ("smallest.png", "no_preamble", "slope0.dcm", "pages.tiff", "nan.tiff")]
    rng = random.Random(0)
    for _ in range(400):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            where = rng.randrange(len(data))
            op = rng.random()
            if op < 0.5:
                data[where] = rng.randrange(256)
            elif op < 0.75:
                del data[where:]
                data = data or bytearray(b"\x00")
            else:
                data[where:where] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        try:
            read_radiograph(bytes(data), "mangled.bin")
        except RadiographError as exc:
            assert str(exc).startswith("mangled.bin: ") and REPR not in str(exc), str(exc)
