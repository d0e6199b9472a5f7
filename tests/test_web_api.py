"""`msk web` HTTP API against the real tritonserver (tiny stand-in members, same contract).

The app runs as its own process; every number it returns is compared with what the Python client
(`clients.mura.MuraClient`) gets from the same server for the same image.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from clients.mura import MuraClient
from clients.web.rendering import colormap, stretch
from msk import RESEARCH_USE_NOTICE
from msk.constants import DEFAULT_GRPC_URL, MURA_ENSEMBLE_MODEL, MURA_MEMBERS, WRIST_CLASSES
from msk.imaging import load_grayscale
from tests.plugins.web import REPO_ROOT, encode, synthetic_radiograph

TRACEBACK = re.compile(r"Traceback|File \"/|line \d+, in ", re.IGNORECASE)


def post(app, files: list[tuple[str, bytes]], body_part: str = "", timeout: float = 120):
    return requests.post(f"{app.url}/api/score", timeout=timeout,
                         files=[("files", (name, data)) for name, data in files],
                         data={"body_part": body_part})


def decode_data_url(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


@pytest.fixture(scope="module")
def study_files() -> list[tuple[str, bytes]]:
    return [
        ("forearm_8bit.png", encode(synthetic_radiograph(1))),
        ("forearm_16bit.png", encode(synthetic_radiograph(2, 640, 512, bits=16))),
        ("forearm.jpg", encode(synthetic_radiograph(3, 600, 480), "JPEG")),
    ]


def test_status_reports_ready_model_versions(web_app, web_triton):
    import tritonclient.grpc as grpcclient

    body = requests.get(f"{web_app.url}/api/status", timeout=30).json()
    assert body["reachable"] is True and body["notice"] == RESEARCH_USE_NOTICE
    index = grpcclient.InferenceServerClient(web_triton.grpc_url).get_model_repository_index(
        as_json=True)["models"]
    ready = {(m["name"], m["version"]) for m in index if m.get("state") == "READY"}
    shown = {(name, v) for name, versions in body["models"].items() for v in versions}
    assert shown == ready
    assert MURA_ENSEMBLE_MODEL in body["models"]
    assert set(MURA_MEMBERS) <= set(body["models"])


def test_scores_equal_the_python_client(web_app, web_triton, study_files):
    response = post(web_app, study_files, body_part="forearm")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["notice"] == RESEARCH_USE_NOTICE
    with MuraClient(web_triton.grpc_url) as client:
        expected = client.score([load_grayscale(data) for _, data in study_files],
                                body_parts=["forearm"] * len(study_files))
    assert [im["filename"] for im in body["images"]] == [name for name, _ in study_files]
    for image, ref, (_, data) in zip(body["images"], expected, study_files, strict=True):
        assert image["error"] is None, image["error"]
        assert ref.ok, ref.error
        assert image["probability"] == pytest.approx(ref.probability, abs=1e-6)
        assert set(image["members"]) == set(MURA_MEMBERS)
        for member in MURA_MEMBERS:
            assert image["members"][member] == pytest.approx(ref.members[member], abs=1e-6)
        assert image["threshold"] == ref.threshold
        assert image["abnormal"] == (image["probability"] >= image["threshold"])
        assert image["versions"] == ref.versions
        assert image["body_part"] == "forearm"
        h, w = load_grayscale(data).shape
        assert (image["width"], image["height"]) == (w, h)
        # The heatmap shown is the server's HEATMAP, colour-mapped (±1 grey level from batching).
        assert int(ref.heatmap.max()) - int(ref.heatmap.min()) >= 10   # a map, not a flat tile
        shown = decode_data_url(image["heatmap"]["absolute"]).astype(int)
        assert shown.shape == (*ref.heatmap.shape, 3)
        assert np.abs(shown - colormap(ref.heatmap).astype(int)).max() <= 6
        relative = decode_data_url(image["heatmap"]["relative"])
        assert relative.shape == (*ref.heatmap.shape, 3)
        assert np.abs(relative.astype(int) - colormap(stretch(ref.heatmap)).astype(int)
                      ).mean() < 8
    # Study view: mean probability over the scored images, called at the same operating point.
    study = body["study"]
    assert study["images"] == study["scored"] == len(study_files)
    assert study["probability"] == pytest.approx(np.mean([r.probability for r in expected]),
                                                 abs=1e-6)
    assert study["abnormal"] == (study["probability"] >= study["threshold"])
    for member in MURA_MEMBERS:
        assert study["members"][member] == pytest.approx(
            np.mean([r.members[member] for r in expected]), abs=1e-6)


def test_dicom_upload_is_scored_like_its_pixels(web_app, web_triton, tmp_path):
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = synthetic_radiograph(4, 512, 400, bits=16)
    ds = _dicom(pixels, FileMetaDataset, ExplicitVRLittleEndian, generate_uid)
    path = tmp_path / "wrist.dcm"
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    body = post(web_app, [("IMG0001", data)]).json()     # no extension: sniffed from the bytes
    (image,) = body["images"]
    assert image["error"] is None, image["error"]
    assert image["format"] == "DICOM"
    assert image["body_part"] == "wrist"                  # from BodyPartExamined
    with MuraClient(web_triton.grpc_url) as client:
        ref = client.score([load_grayscale(data)], body_parts=["wrist"])[0]
    assert image["probability"] == pytest.approx(ref.probability, abs=1e-6)
    assert image["threshold"] == ref.threshold


def _dicom(pixels, FileMetaDataset, syntax, generate_uid):
    from pydicom.dataset import Dataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"      # CR Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined = "CR", "WRIST"
    ds.PatientName, ds.PatientID = "Test^Synthetic", "SYN0001"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2200, 3600
    ds.PixelData = (4095 - np.clip(pixels, 0, 4095)).astype(np.uint16).tobytes()
    return ds


def test_bad_files_are_named_and_the_rest_is_scored(web_app):
    good = encode(synthetic_radiograph(5, 400, 320))
    files = [
        ("good.png", good),
        ("truncated.png", good[: len(good) // 3]),
        ("garbage.jpg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4),
        ("notes.txt", b"patient notes, not an image"),
        ("animation.gif", b"GIF89a" + b"\x00" * 64),
        ("empty.png", b""),
        ("broken.dcm", b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage"),
    ]
    response = post(web_app, files)
    assert response.status_code == 200
    assert not TRACEBACK.search(response.text)
    images = {im["filename"]: im for im in response.json()["images"]}
    assert images["good.png"]["error"] is None and 0 <= images["good.png"]["probability"] <= 1
    expectations = {
        "truncated.png": "corrupt PNG", "garbage.jpg": "corrupt JPEG",
        "notes.txt": "unsupported format", "animation.gif": "unsupported format (GIF)",
        "empty.png": "empty", "broken.dcm": "DICOM",
    }
    for name, phrase in expectations.items():
        error = images[name]["error"]
        assert error.startswith(f"{name}:"), error
        assert phrase in error, error
        assert len(error) < 400
    study = response.json()["study"]
    assert (study["scored"], study["failed"]) == (1, len(files) - 1)
    assert study["probability"] == pytest.approx(images["good.png"]["probability"])


def test_request_errors_are_sentences(web_app):
    missing = requests.post(f"{web_app.url}/api/score", timeout=30)
    assert missing.status_code == 400 and "files" in missing.json()["error"]
    bad_part = post(web_app, [("a.png", encode(synthetic_radiograph(6, 200, 200)))], "knee")
    assert bad_part.status_code == 400 and "unknown body part" in bad_part.json()["error"]
    for r in (missing, bad_part):
        assert not TRACEBACK.search(r.text)


@pytest.mark.parametrize("path", ["/", "/models", "/no/such/page"])
def test_every_page_carries_the_notice_and_versions(web_app, web_triton, path):
    response = requests.get(web_app.url + path, timeout=30)
    assert response.status_code == (404 if path.startswith("/no") else 200)
    assert RESEARCH_USE_NOTICE in response.text
    assert f'data-model="{MURA_ENSEMBLE_MODEL}"' in response.text
    assert not TRACEBACK.search(response.text)


def test_server_down_is_a_readable_message(web_app_server_down):
    page = requests.get(web_app_server_down.url + "/", timeout=30)
    assert page.status_code == 200
    assert RESEARCH_USE_NOTICE in page.text and "is not reachable" in page.text
    response = post(web_app_server_down, [("a.png", encode(synthetic_radiograph(7, 300, 260)))])
    assert response.status_code == 200
    (image,) = response.json()["images"]
    assert image["error"].startswith("a.png: The inference server at 127.0.0.1:")
    assert "is not reachable" in image["error"]
    assert not TRACEBACK.search(response.text)


def test_no_model_and_no_torch_in_the_web_process(web_app):
    """The web process scored images above; it must hold gRPC clients only."""
    post(web_app, [("a.png", encode(synthetic_radiograph(8, 300, 260)))])
    maps = Path(f"/proc/{web_app.pid}/maps").read_text()
    loaded = {Path(line.split()[-1]).name for line in maps.splitlines()
              if len(line.split()) >= 6}
    assert not [lib for lib in loaded if "torch" in lib or "onnxruntime" in lib], loaded


def test_web_binds_loopback_by_default():
    from msk.cli import build_parser

    args = build_parser().parse_args(["web"])
    assert args.host == "127.0.0.1"
    assert args.triton_url is None          # not given: the loopback default below
    assert DEFAULT_GRPC_URL.startswith("127.0.0.1:")
    several = build_parser().parse_args(["web", "--triton-url", "a:1", "--triton-url", "b:2"])
    assert several.triton_url == ["a:1", "b:2"]


def test_wrist_images_get_the_detectors_boxes(web_app_wrist, wrist_upload):
    from clients.wrist import WristClient

    name, data, pixels = wrist_upload
    body = post(web_app_wrist, [(name, data)], body_part="wrist").json()
    assert body["status"]["wrist_detect"] is True
    (image,) = body["images"]
    assert image["error"] is None and image["body_part"] == "wrist", image["error"]
    with WristClient(web_app_wrist.triton_url) as client:
        (ref,) = client.detect([pixels])
    assert ref.error is None and ref.detections
    assert [b["label"] for b in image["boxes"]] == [d.class_name for d in ref.detections]
    for shown, det in zip(image["boxes"], ref.detections, strict=True):
        assert shown["label"] in WRIST_CLASSES
        for key in ("x1", "y1", "x2", "y2", "score"):
            assert shown[key] == pytest.approx(getattr(det, key), abs=1e-3)
        assert 0 <= shown["x1"] < shown["x2"] <= image["width"]
        assert 0 <= shown["y1"] < shown["y2"] <= image["height"]
    assert image["wrist_versions"] == ref.versions
    # Not a wrist: no detector call, no boxes.
    elbow = post(web_app_wrist, [("elbow.png", data)], "elbow").json()
    assert "boxes" not in elbow["images"][0]


def test_the_documented_python_example_gives_the_page_numbers(web_app, tmp_path, capsys):
    """docs/web.md promises the page's results from `clients` in three lines: run them."""
    text = (REPO_ROOT / "docs" / "web.md").read_text()
    code = text.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) == 3
    image = tmp_path / "elbow1.png"
    image.write_bytes(encode(synthetic_radiograph(9, 500, 400)))
    code = code.replace("127.0.0.1:8001", web_app.triton_url)
    code = code.replace('"elbow1.png"', repr(str(image)))
    namespace: dict = {}
    exec(compile(code, "docs/web.md", "exec"), namespace)
    result = namespace["result"]
    assert str(result.probability) in capsys.readouterr().out
    shown = post(web_app, [("elbow1.png", image.read_bytes())], "elbow").json()["images"][0]
    assert result.probability == pytest.approx(shown["probability"], abs=1e-6)
    assert result.abnormal == shown["abnormal"] and result.versions == shown["versions"]
    assert result.members == pytest.approx(shown["members"], abs=1e-6)
    assert result.heatmap.shape == (320, 320)
