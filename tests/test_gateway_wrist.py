"""Wrists end to end: the gateway runs `wrist_detect` next to the MURA ensemble and the SR
carries every detected structure as an SCOORD on the source image.

One real tritonserver serves the tiny MURA stand-in and the wrist detectors trained on synthetic
wrists by `tests/plugins/wrist.py` (cached); the image is a synthetic wrist wrapped in DICOM.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from clients.sr import device_uid, summarize
from clients.wrist import WristClient
from msk.imaging import load_grayscale
from tests.plugins.pacs import (
    GATEWAY_AET,
    SyntheticPatient,
    assert_no_phi,
    dciodvfy_errors,
    make_dx_image,
    storescu,
)

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def mura_wrist_triton(tiny_repository, wrist_repository, tmp_path_factory) -> Iterator:
    """One Triton serving both repositories (merged by copying the model folders)."""
    from server.launcher import TritonServer

    repo = tmp_path_factory.mktemp("mura-wrist-repository")
    for source in (Path(tiny_repository), Path(wrist_repository)):
        for model in source.iterdir():
            if model.is_dir() and (model / "config.pbtxt").exists():
                shutil.copytree(model, repo / model.name)
    with TritonServer(repo) as server:
        yield server


def test_wrist_structures_reach_the_pacs_as_scoord(mura_wrist_triton, orthanc, start_gateway,
                                                   tmp_path: Path) -> None:
    from training.wrist_synthetic import make_wrist

    gateway = start_gateway(mura_wrist_triton.grpc_url, orthanc.destination, "--wrist", "on")
    patient = SyntheticPatient("Wristworth^Seraphina", "PHI-7731-0101")
    study_uid = generate_uid()
    # the held-out synthetic wrists the wrist serving tests use (not seen in training)
    wrists = [make_wrist(2000 + i, 0, sixteen_bit=False) for i in range(4)]
    paths = [make_dx_image(tmp_path / f"wrist{i}.dcm", patient, w.image, "WRIST", study_uid)
             for i, w in enumerate(wrists)]
    storescu(paths, gateway.port, GATEWAY_AET)
    (sr,) = orthanc.wait_for_sr(study_uid, diagnostics=gateway.logs)

    images = [load_grayscale(p) for p in paths]
    assert all((img == w.image).all() for img, w in zip(images, wrists, strict=True))
    with WristClient(mura_wrist_triton.grpc_url) as client:
        direct = client.detect(images)
    assert all(r.error is None for r in direct), [r.error for r in direct]
    assert sum(len(r.detections) for r in direct) > 0, "the CI detectors found nothing"

    assert dciodvfy_errors(sr, tmp_path) == []
    summary = summarize(sr)
    by_source = {i["source"]: i for i in summary["images"]}
    for path, result in zip(paths, direct, strict=True):
        image = by_source[str(dcmread(path).SOPInstanceUID)]
        assert "probability" in image and "call" in image       # MURA ran as well
        structures = image["structures"]
        assert [s["class"] for s in structures] == [d.class_name for d in result.detections]
        for found, det in zip(structures, result.detections, strict=True):
            assert found["confidence"] == pytest.approx(det.score, rel=1e-5)
            corners = [det.x1, det.y1, det.x2, det.y1, det.x2, det.y2, det.x1, det.y2, det.x1,
                       det.y1]
            assert found["graphic_type"] == "POLYLINE"
            assert found["region"] == pytest.approx(corners, rel=1e-6, abs=1e-3)
            assert found["selected_from"] == image["source"]
            # the confidence names the detector that gave it, as the server reported it
            detector = found["algorithm"]
            assert detector["name"] in ("wrist_joints", "wrist_bones")
            assert detector["version"] == result.versions[detector["name"]]
            assert detector["sha256"] == result.artifacts[detector["name"]]

    # provenance covers the detectors too: their SHA-256 are part of the Device UID
    names = {a["name"] for a in summary["algorithms"]}
    assert set(direct[0].versions) <= names
    shas = [a["sha256"] for a in summary["algorithms"] if a["sha256"]]
    assert sr.DeviceUID == device_uid(shas)
    assert set(direct[0].artifacts.values()) - {""} <= set(shas)
    assert_no_phi(gateway.log_paths(), [patient])
