"""The result objects: a TID 1500 Measurement Report SR and heatmap Segmentations, built by
highdicom, checked three ways here: dciodvfy (Debian dicom3tools, the reference IOD validator)
finds no error and no warning of ours; highdicom reads every object back and every probability,
call, operating point, region and confidence is recovered from it; the header says what a PACS
needs (study joined, new series, UNVERIFIED, research use, provenance). Orthanc's part is in
tests/test_gateway_e2e.py and tests/test_gateway_dicomweb.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from clients.findings import (
    ImageFinding,
    ModelProvenance,
    NotScored,
    ProvenanceError,
    Structure,
    StudyResult,
)
from clients.sr import (
    COMPREHENSIVE_3D_SR_STORAGE,
    PRIVATE_SCHEME,
    SR_SERIES_DESCRIPTION,
    build_sr,
    device_uid,
    summarize,
)
from msk import RESEARCH_USE_NOTICE
from tests.plugins.pacs import _tool, dciodvfy

DX = "1.2.840.10008.5.1.4.1.1.1.1"
SHAS = {"densenet169_a": "a" * 64, "densenet169_b": "b" * 64, "resnet101_a": "c" * 64,
        "resnet101_b": "d" * 64}


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


def study_result(source: Dataset, structures: bool = True) -> StudyResult:
    def image(part, p, members, found=(), error=None, threshold=None):
        return ImageFinding(DX, generate_uid(), source.SeriesInstanceUID, part, p,
                            dict(members), None if p is None else p >= (threshold or 0.5),
                            error, list(found), threshold)
    members_1 = {"densenet169_a": 0.8, "densenet169_b": 0.7, "resnet101_a": 0.9,
                 "resnet101_b": 0.6}
    members_2 = {"densenet169_a": 0.2, "densenet169_b": 0.1, "resnet101_a": 0.3,
                 "resnet101_b": 0.2}
    wrist = image("wrist", 0.85, members_1, [
        Structure("radcar", 0.91, 100.0, 200.5, 180.0, 260.0),
        Structure("lunate", 0.55, 120.0, 150.0, 160.0, 190.0)] if structures else [],
        threshold=0.45)
    second = image("elbow", 0.2, members_2, threshold=0.55)
    broken = image("wrist", None, {}, error="cannot decode pixel data (JPEG 2000)")
    models = [ModelProvenance("mura_ensemble", "1")] + [
        ModelProvenance(m, "1", sha) for m, sha in SHAS.items()] + [
        ModelProvenance("wrist_joints", "2", "e" * 64),
        ModelProvenance("wrist_bones", "2", "f" * 64),
        ModelProvenance("wrist_postprocess", "2")]
    return StudyResult.of([wrist, second, broken], models, default_threshold=0.5,
                          skipped=[NotScored(generate_uid(),
                                             "not an image (SOP class Basic Text SR)")])


@pytest.fixture()
def sr_file(tmp_path: Path) -> tuple[Dataset, StudyResult, Path]:
    source = source_header()
    result = study_result(source)
    path = tmp_path / "sr.dcm"
    build_sr(source, result).save_as(path, enforce_file_format=True)
    return source, result, path


def test_sr_passes_dciodvfy(sr_file, tmp_path: Path) -> None:
    _, _, path = sr_file
    assert dciodvfy(path) == []
    # without the four privately coded wrist structures: not even the private-scheme warning
    source = source_header()
    plain = tmp_path / "plain.dcm"
    sr = build_sr(source, study_result(source, structures=False))
    assert "CodingSchemeIdentificationSequence" not in sr
    sr.save_as(plain, enforce_file_format=True)
    out = subprocess.run([_tool("dciodvfy"), str(plain)], capture_output=True, text=True,
                         timeout=60)
    assert [line for line in out.stderr.splitlines() if line.startswith(("Error", "Warn"))] == []


def test_sr_is_a_tid1500_report_highdicom_reads(sr_file) -> None:
    source, _, path = sr_file
    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    report = hd.sr.MeasurementReport.from_sequence(sr.content)     # TID 1500 root
    assert report[0].ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert len(report.get_image_measurement_groups()) == 3          # study + 2 scored images
    assert len(report.get_planar_roi_measurement_groups()) == 2     # the two structures


def test_sr_header_joins_study_in_new_series(sr_file) -> None:
    source, result, path = sr_file
    ds = dcmread(path)
    assert ds.SOPClassUID == COMPREHENSIVE_3D_SR_STORAGE
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert ds.SOPInstanceUID != source.SOPInstanceUID
    assert ds.PatientName == source.PatientName and ds.PatientID == source.PatientID
    assert ds.AccessionNumber == "ACC123"
    assert ds.VerificationFlag == "UNVERIFIED" and ds.CompletionFlag == "COMPLETE"
    assert ds.SeriesDescription == SR_SERIES_DESCRIPTION
    assert "RESEARCH USE ONLY" in ds.SeriesDescription
    assert "NOT FOR DIAGNOSIS" in ds.SeriesDescription
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0]
    refs = {r.ReferencedSOPInstanceUID for s in evidence.ReferencedSeriesSequence
            for r in s.ReferencedSOPSequence}
    assert {i.sop_instance_uid for i in result.scored} <= refs


def test_sr_content_scores(sr_file) -> None:
    _, result, path = sr_file
    summary = summarize(dcmread(path))
    # study = mean over the scored images (the broken one is not scored)
    assert summary["probability"] == pytest.approx((0.85 + 0.2) / 2, abs=1e-6)
    assert summary["call"] == "Abnormal"
    assert summary["operating_point"] == pytest.approx(0.5)
    assert summary["images_scored"] == 2
    assert summary["members"]["resnet101_a"] == pytest.approx(0.6, abs=1e-6)
    assert summary["comments"] == [RESEARCH_USE_NOTICE]
    images = summary["images"]
    assert [i["source"] for i in images] == [i.sop_instance_uid for i in result.scored]
    assert [i["probability"] for i in images] == [0.85, 0.2]
    assert [i["call"] for i in images] == ["Abnormal", "Normal"]
    # each image's call is stated with its body part's operating point
    assert [i["operating_point"] for i in images] == [0.45, 0.55]
    assert [i["finding_site"] for i in images] == ["Wrist joint structure",
                                                   "Elbow region structure"]
    assert images[0]["members"] == result.images[0].members
    not_scored = " | ".join(summary["not_scored"])
    assert "cannot decode" in not_scored and "Basic Text SR" in not_scored
    assert result.images[2].sop_instance_uid in not_scored


def test_sr_wrist_structures_as_scoord(sr_file) -> None:
    _, result, path = sr_file
    structures = summarize(dcmread(path))["images"][0]["structures"]
    assert [s["class"] for s in structures] == ["radcar", "lunate"]
    radcar = structures[0]
    assert radcar["confidence"] == pytest.approx(0.91)
    assert radcar["meaning"] == "Wrist joint structure"        # SNOMED CT where it has one
    # closed polyline, column/row pairs: (x1,y1) (x2,y1) (x2,y2) (x1,y2) (x1,y1)
    assert radcar["graphic_type"] == "POLYLINE"
    assert radcar["region"] == [100.0, 200.5, 180.0, 200.5, 180.0, 260.0, 100.0, 260.0,
                                100.0, 200.5]
    assert radcar["selected_from"] == result.images[0].sop_instance_uid
    # each confidence names the detector that gave it, with its version and SHA-256
    assert radcar["algorithm"] == {"name": "wrist_joints", "version": "2", "sha256": "e" * 64}
    assert structures[1]["algorithm"] == {"name": "wrist_bones", "version": "2",
                                          "sha256": "f" * 64}


def test_private_codes_are_declared_once(sr_file) -> None:
    _, _, path = sr_file
    ds = dcmread(path)
    (scheme,) = ds.CodingSchemeIdentificationSequence
    assert scheme.CodingSchemeDesignator == PRIVATE_SCHEME


def test_sr_provenance(sr_file) -> None:
    _, _, path = sr_file
    ds = dcmread(path)
    ours = [e for e in ds.ContributingEquipmentSequence if e.Manufacturer == "msk-triton project"]
    (equipment,) = ours
    assert equipment.ManufacturerModelName
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert "densenet169_a:1" in list(equipment.SoftwareVersions)
    assert ds.DeviceUID == device_uid([*SHAS.values(), "e" * 64, "f" * 64])
    summary = summarize(ds)
    assert summary["device_observer_uid"] == ds.DeviceUID
    by_name = {a["name"]: a for a in summary["algorithms"]}
    assert by_name["resnet101_b"]["sha256"] == "d" * 64
    assert by_name["resnet101_b"]["version"] == "1"
    assert by_name["wrist_joints"]["sha256"] == "e" * 64
    assert set(by_name) == {"mura_ensemble", *SHAS, "wrist_joints", "wrist_bones",
                            "wrist_postprocess"}
    # what Triton did not return is absent, never a placeholder: the ensemble has no artifact
    assert by_name["mura_ensemble"] == {"name": "mura_ensemble", "version": "1", "sha256": None}
    assert by_name["wrist_postprocess"]["sha256"] is None
    texts = [str(e.value) for e in ds.iterall() if e.keyword == "TextValue"]
    assert not any(t.endswith("sha256=") or "latest" in t or "unknown" in t for t in texts)


@pytest.mark.parametrize(("version", "sha"), [("latest", None), ("", None), ("?", None),
                                              ("1", ""), ("1", "abc"), ("1", "E" * 64)])
def test_provenance_refuses_placeholders(version: str, sha: str | None) -> None:
    with pytest.raises(ProvenanceError):
        ModelProvenance("wrist_joints", version, sha)


def test_sr_without_a_models_provenance_fails_instead_of_guessing() -> None:
    source = source_header()
    result = study_result(source)
    for missing in ("wrist_joints", "resnet101_a", "mura_ensemble"):
        partial = StudyResult.of(result.images, [m for m in result.models if m.name != missing],
                                 default_threshold=0.5)
        with pytest.raises(ProvenanceError, match=missing):
            build_sr(source, partial)


def test_the_study_result_is_the_one_study_call() -> None:
    """No second rule: every study-level value of a result is its `study_call`'s."""
    source = source_header()
    images = [ImageFinding(DX, generate_uid(), source.SeriesInstanceUID, "wrist", p,
                           threshold=0.3) for p in (0.2, 0.35)]
    result = StudyResult.of(images, [], default_threshold=0.5)
    assert (result.probability, result.threshold, result.abnormal) == \
        (pytest.approx(0.275), 0.3, False)
    assert result.call.threshold == 0.3 and result.call.abnormal is False
    refused = ImageFinding(DX, generate_uid(), source.SeriesInstanceUID, "wrist", refused=True)
    none = StudyResult.of([refused], [], default_threshold=0.5)
    assert none.abnormal is None and none.probability is None and none.threshold == 0.5


def test_device_uid_is_tied_to_artifacts() -> None:
    uid = device_uid(SHAS.values())
    assert uid.startswith("2.25.") and len(uid) <= 64
    assert device_uid(reversed(list(SHAS.values()))) == uid          # order does not matter
    assert device_uid(["e" * 64, *list(SHAS.values())[1:]]) != uid    # new weights, new UID


def test_sr_with_missing_type2_source_attributes(tmp_path: Path) -> None:
    source = source_header()
    del source.AccessionNumber      # type-2 attributes missing in the source stay present
    result = StudyResult.of([ImageFinding(DX, generate_uid(), source.SeriesInstanceUID,
                                          "elbow", 0.4, {"densenet169_a": 0.4}, False)],
                            [ModelProvenance("mura_ensemble", "3"),
                             ModelProvenance("densenet169_a", "3", "f" * 64)],
                            default_threshold=0.55)
    path = tmp_path / "sr.dcm"
    build_sr(source, result).save_as(path, enforce_file_format=True)
    assert dciodvfy(path) == []
    summary = summarize(dcmread(path))
    assert summary["call"] == "Normal" and summary["operating_point"] == pytest.approx(0.55)
    assert dcmread(path).AccessionNumber == ""
