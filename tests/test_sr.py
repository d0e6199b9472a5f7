"""The result SR (and the optional Secondary Capture): content, provenance, and validity.

Validity is checked by dciodvfy (Debian dicom3tools), the reference IOD validator: every object
we would send to a PACS must produce no "Error" line.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from clients.sr import (
    COMPREHENSIVE_SR_STORAGE,
    SR_SERIES_DESCRIPTION,
    ImageFinding,
    ModelProvenance,
    Structure,
    StudyResult,
    build_overlay,
    build_sr,
    device_uid,
    summarize,
)
from msk import RESEARCH_USE_NOTICE

CR = "1.2.840.10008.5.1.4.1.1.1"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
SHAS = {"densenet169_a": "a" * 64, "densenet169_b": "b" * 64, "resnet101_a": "c" * 64,
        "resnet101_b": "d" * 64}


def dciodvfy(path: Path) -> list[str]:
    """dciodvfy's error lines for `path` (warnings are informative, errors are not allowed)."""
    exe = shutil.which("dciodvfy")
    assert exe, "dciodvfy (Debian dicom3tools) is required; run scripts/install_test_packages.sh"
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def source_header() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = DX
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Müller^Jürgen"
    ds.PatientID = "SR-TEST-0042"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.StudyDate, ds.StudyTime = "20240102", "101500"
    ds.AccessionNumber = "ACC123"
    ds.StudyID = "S1"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "XR WRIST 3 VIEWS"
    return ds


def study_result(source: Dataset) -> StudyResult:
    def image(part, p, members, structures=(), error=None):
        return ImageFinding(DX, generate_uid(), source.SeriesInstanceUID, part, p,
                            dict(members), None if p is None else p >= 0.5, error,
                            list(structures))
    members_1 = {"densenet169_a": 0.8, "densenet169_b": 0.7, "resnet101_a": 0.9,
                 "resnet101_b": 0.6}
    members_2 = {"densenet169_a": 0.2, "densenet169_b": 0.1, "resnet101_a": 0.3,
                 "resnet101_b": 0.2}
    wrist = image("wrist", 0.85, members_1, [
        Structure("radcar", 0.91, 100.0, 200.5, 180.0, 260.0),
        Structure("lunate", 0.55, 120.0, 150.0, 160.0, 190.0)])
    second = image("wrist", 0.2, members_2)
    broken = image("wrist", None, {}, error="cannot decode pixel data (JPEG 2000)")
    models = [ModelProvenance("mura_ensemble", "1", "")] + [
        ModelProvenance(m, "1", sha) for m, sha in SHAS.items()]
    return StudyResult([wrist, second, broken], models, 0.5,
                       skipped=[(generate_uid(), "not an image (SOP class Basic Text SR)")])


@pytest.fixture()
def sr_file(tmp_path: Path) -> tuple[Dataset, StudyResult, Path]:
    source = source_header()
    result = study_result(source)
    path = tmp_path / "sr.dcm"
    build_sr(source, result).save_as(path, enforce_file_format=True)
    return source, result, path


def test_sr_passes_dciodvfy(sr_file) -> None:
    _, _, path = sr_file
    assert dciodvfy(path) == []


def test_sr_header_joins_study_in_new_series(sr_file) -> None:
    source, _, path = sr_file
    ds = dcmread(path)
    assert ds.SOPClassUID == COMPREHENSIVE_SR_STORAGE
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert ds.SOPInstanceUID != source.SOPInstanceUID
    assert ds.PatientName == source.PatientName and ds.PatientID == source.PatientID
    assert ds.AccessionNumber == "ACC123"
    assert ds.VerificationFlag == "UNVERIFIED"
    assert ds.SeriesDescription == SR_SERIES_DESCRIPTION
    assert "RESEARCH USE ONLY" in ds.SeriesDescription
    assert "NOT FOR DIAGNOSIS" in ds.SeriesDescription
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0]
    refs = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert len(refs) == 3


def test_sr_content_scores(sr_file) -> None:
    _, result, path = sr_file
    summary = summarize(dcmread(path))
    # study = mean over the scored images (the broken one is not scored)
    assert summary["Abnormality probability"] == pytest.approx((0.85 + 0.2) / 2, abs=1e-6)
    assert summary["Abnormality assessment"] == "Abnormal"
    assert summary["Decision threshold"] == pytest.approx(0.5)
    assert summary["Number of images scored"] == 2
    assert summary["Member probability resnet101_a"] == pytest.approx(0.6, abs=1e-6)
    assert summary["context"]["Comment"] == RESEARCH_USE_NOTICE
    assert summary["context"]["Observer Type"] == "Device"
    images = summary["images"]
    assert [i.get("Abnormality probability") for i in images] == [0.85, 0.2, None]
    assert images[0]["Finding site"] == "Wrist joint structure"
    assert images[0]["Source"] == result.images[0].sop_instance_uid
    assert images[2]["Instance not scored"].startswith("cannot decode")
    assert len(summary["not_scored"]) == 1 and "Basic Text SR" in summary["not_scored"][0]


def test_sr_wrist_structures_as_scoord(sr_file) -> None:
    _, result, path = sr_file
    structures = summarize(dcmread(path))["images"][0]["structures"]
    assert [s["class"] for s in structures] == ["radcar", "lunate"]
    radcar = structures[0]
    assert radcar["Detection confidence"] == pytest.approx(0.91)
    # closed polyline, column/row pairs: (x1,y1) (x2,y1) (x2,y2) (x1,y2) (x1,y1)
    assert radcar["Image Region"] == [100.0, 200.5, 180.0, 200.5, 180.0, 260.0, 100.0, 260.0,
                                      100.0, 200.5]
    assert radcar["selected_from"] == result.images[0].sop_instance_uid


def test_sr_provenance(sr_file) -> None:
    _, _, path = sr_file
    ds = dcmread(path)
    equipment = ds.ContributingEquipmentSequence[0]
    assert equipment.Manufacturer and equipment.ManufacturerModelName
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert equipment.DeviceUID == device_uid(SHAS.values())
    assert "densenet169_a:1" in list(equipment.SoftwareVersions)
    algorithms = summarize(ds)["algorithms"]
    by_name = {a["Algorithm Name"]: a for a in algorithms}
    assert by_name["resnet101_b"]["Model artifact SHA-256"] == "d" * 64
    assert by_name["resnet101_b"]["Algorithm Version"] == "1"
    assert summarize(ds)["context"]["Device Observer UID"] == equipment.DeviceUID


def test_device_uid_is_tied_to_artifacts() -> None:
    uid = device_uid(SHAS.values())
    assert uid.startswith("2.25.") and len(uid) <= 64
    assert device_uid(reversed(list(SHAS.values()))) == uid          # order does not matter
    assert device_uid(["e" * 64, *list(SHAS.values())[1:]]) != uid    # new weights, new UID


def test_sr_without_scores_or_structures_is_valid(tmp_path: Path) -> None:
    source = source_header()
    del source.AccessionNumber      # type-2 attributes missing in the source stay present
    result = StudyResult([ImageFinding(CR, generate_uid(), source.SeriesInstanceUID, "elbow",
                                       0.4, {"densenet169_a": 0.4}, False)],
                         [ModelProvenance("densenet169_a", "3", "f" * 64)], 0.55)
    path = tmp_path / "sr.dcm"
    build_sr(source, result).save_as(path, enforce_file_format=True)
    assert dciodvfy(path) == []
    summary = summarize(dcmread(path))
    assert summary["Abnormality assessment"] == "Normal"
    assert dcmread(path).AccessionNumber == ""


def test_secondary_capture_overlay(tmp_path: Path) -> None:
    source = source_header()
    gray = np.tile(np.arange(0, 200, 2, dtype=np.uint8), (60, 1))      # 60 x 100
    heat = np.zeros((10, 10), np.uint8)
    heat[:, 5:] = 255
    models = [ModelProvenance("densenet169_a", "1", "a" * 64)]
    sc = build_overlay(source, gray, heat, models)
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    assert dciodvfy(path) == []
    back = dcmread(path)
    rgb = back.pixel_array
    assert rgb.shape == (60, 100, 3)
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    # where the heatmap is 0 the image shows through unchanged (gray in all channels)
    np.testing.assert_array_equal(rgb[:, :20, 0], gray[:, :20])
    np.testing.assert_array_equal(rgb[:, :20, 1], gray[:, :20])
    # where it is 255 the red channel is lifted and green/blue dimmed by alpha
    assert (rgb[:, 80:, 0].astype(int) >= gray[:, 80:]).all()
    np.testing.assert_array_equal(rgb[:, 80:, 1], np.rint(gray[:, 80:] * 0.6).astype(np.uint8))
