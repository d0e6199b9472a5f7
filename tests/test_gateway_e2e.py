"""End to end against real components: dcmtk storescu (the modality) -> `msk gateway` (a real
process) -> the real tritonserver (tiny stand-in backbones, same contract) -> SR by C-STORE ->
Orthanc (the PACS, Debian package) -> read back through Orthanc's REST API with pydicom.

Expected scores are not hard-coded: the same images are scored directly with `MuraClient` and
the SR must carry those numbers. Every test also greps every log it produced for the test
patients' names, IDs and birth dates.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from clients.heatmap_seg import read_heatmap
from clients.mura import MuraClient
from clients.sr import SR_SERIES_DESCRIPTION, device_uid, summarize
from msk.imaging import load_grayscale
from tests.plugins.pacs import (
    GATEWAY_AET,
    PACS_AET,
    SyntheticPatient,
    assert_no_phi,
    dciodvfy_errors,
    make_dx_image,
    make_study,
    make_text_sr,
    storescu,
)

pytestmark = pytest.mark.timeout(600)


def _direct_scores(triton_url: str, files: list[Path], part: str):
    images = [load_grayscale(f) for f in files]
    with MuraClient(triton_url) as client:
        results = client.score(images, body_parts=[part] * len(images))
    assert all(r.error is None for r in results), [r.error for r in results]
    return results


def test_study_scored_and_sr_stored_in_pacs(tiny_triton, orthanc, start_gateway,
                                            tmp_path: Path) -> None:
    gateway = start_gateway(tiny_triton.grpc_url, orthanc.destination)
    patient = SyntheticPatient("Quillfeather^Ottoline", "PHI-7731-0001", "19520229")
    files = make_study(tmp_path / "study", patient, ["WRIST", "WRIST", "CHEST"])
    study_uid = dcmread(files[0]).StudyInstanceUID
    note = make_text_sr(tmp_path / "study", patient, study_uid)
    storescu([*files, note], gateway.port, GATEWAY_AET)

    (sr,) = orthanc.wait_for_sr(study_uid, diagnostics=gateway.logs)
    direct = _direct_scores(tiny_triton.grpc_url, files[:2], "wrist")

    # header: joins the study, new series, research-use, unverified, patient copied
    assert sr.StudyInstanceUID == study_uid
    assert sr.SeriesInstanceUID != dcmread(files[0]).SeriesInstanceUID
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.SeriesDescription == SR_SERIES_DESCRIPTION
    assert str(sr.PatientName) == patient.name and sr.PatientID == patient.patient_id
    assert dciodvfy_errors(sr, tmp_path) == []

    # scores: the study result is the mean of the two wrist images, members likewise
    summary = summarize(sr)
    expected = float(np.mean([r.probability for r in direct]))
    assert summary["probability"] == pytest.approx(expected, abs=2e-6)
    assert summary["images_scored"] == 2
    for member in direct[0].members:
        mean = float(np.mean([r.members[member] for r in direct]))
        assert summary["members"][member] == pytest.approx(mean, abs=2e-6)
    scored = summary["images"]
    assert [i["source"] for i in scored] == [str(dcmread(f).SOPInstanceUID) for f in files[:2]]
    for image, result in zip(scored, direct, strict=True):
        assert image["probability"] == pytest.approx(result.probability, abs=2e-6)
        assert image["call"] == ("Abnormal" if result.abnormal else "Normal")
        assert image["operating_point"] == pytest.approx(result.threshold, abs=1e-6)
        assert image["finding_site"] == "Wrist joint structure"

    # the chest image and the non-image object were skipped with reasons, not errors
    reasons = " | ".join(summary["not_scored"])
    assert "not routed" in reasons and "not an image" in reasons

    # provenance: Device UID from the artifacts' SHA-256 the server reported
    assert sr.DeviceUID == device_uid(direct[0].artifacts.values())
    assert summary["device_observer_uid"] == sr.DeviceUID
    shas = {a["name"]: a["sha256"] for a in summary["algorithms"]}
    for member, sha in direct[0].artifacts.items():
        assert shas[member] == sha

    # audit: delivered, with the models and the SR's UIDs
    (delivered,) = gateway.wait_audit("delivered")
    assert delivered["result_uids"]["sr_sop_instance_uid"] == sr.SOPInstanceUID
    assert delivered["images_scored"] == 2 and delivered["instances"] == 4
    assert {m["name"] for m in delivered["models"]} >= set(direct[0].members)

    # metrics: the queue is empty again
    with urllib.request.urlopen(f"http://127.0.0.1:{gateway.metrics_port}/metrics") as resp:
        metrics = resp.read().decode()
    assert 'msk_gateway_queue_depth{state="outbox"} 0.0' in metrics
    assert 'msk_gateway_queue_depth{state="dead"} 0.0' in metrics

    assert_no_phi(gateway.log_paths() + [tiny_triton.log_path], [patient])


def test_pacs_forwards_study_and_gets_sr_back(tiny_triton, orthanc, start_gateway,
                                              tmp_path: Path) -> None:
    """The hospital set-up of docs/pacs.md: modality -> PACS -> gateway -> PACS."""
    gateway = start_gateway(tiny_triton.grpc_url, orthanc.destination, "--heatmaps")
    orthanc.add_modality("msk", GATEWAY_AET, gateway.port)
    patient = SyntheticPatient("Vantongeren^Philippa", "PHI-7731-0002")
    files = make_study(tmp_path / "study", patient, ["ELBOW"])
    study_uid = dcmread(files[0]).StudyInstanceUID
    storescu(files, orthanc.dicom_port, PACS_AET)
    orthanc.request("POST", "/modalities/msk/store",
                    {"Resources": [orthanc.study_id(study_uid)], "Synchronous": True})
    (sr,) = orthanc.wait_for_sr(study_uid, diagnostics=gateway.logs)
    assert summarize(sr)["images"][0]["finding_site"] == "Elbow region structure"
    (heatmap,) = orthanc.instances(study_uid, "SEG")
    assert heatmap.SegmentationType == "BINARY"          # what OHIF displays (docs/pacs.md)
    source_uid, activation = read_heatmap(heatmap)
    assert source_uid == dcmread(files[0]).SOPInstanceUID
    assert activation.shape == (heatmap.Rows, heatmap.Columns)
    assert dciodvfy_errors(heatmap, tmp_path) == [] and dciodvfy_errors(sr, tmp_path) == []
    assert_no_phi(gateway.log_paths(), [patient])


def test_pacs_outage_only_delays_delivery(tiny_triton, orthanc, start_gateway,
                                          tmp_path: Path) -> None:
    gateway = start_gateway(tiny_triton.grpc_url, orthanc.destination)
    orthanc.stop()
    patient = SyntheticPatient("Abernathy^Clementine", "PHI-7731-0003")
    files = make_study(tmp_path / "study", patient, ["HAND"])
    storescu(files, gateway.port, GATEWAY_AET)
    retry = gateway.wait_audit("retry")[0]
    assert retry["stage"] == "outbox" and "association" in retry["error"]
    assert retry["outage"] is True         # an outage never dead-letters, it only delays
    orthanc.start()
    (sr,) = orthanc.wait_for_sr(dcmread(files[0]).StudyInstanceUID, diagnostics=gateway.logs)
    (delivered,) = gateway.wait_audit("delivered")
    assert delivered["delivery_attempts"] >= 2
    assert delivered["result_uids"]["sr_sop_instance_uid"] == sr.SOPInstanceUID
    assert_no_phi(gateway.log_paths(), [patient])


def test_gateway_killed_mid_study_completes_after_restart(tiny_triton, orthanc, start_gateway,
                                                          tmp_path: Path) -> None:
    gateway = start_gateway(tiny_triton.grpc_url, orthanc.destination, "--stable-seconds", "15")
    patient = SyntheticPatient("Featherstonehaugh^Ignatius", "PHI-7731-0004")
    files = make_study(tmp_path / "study", patient, ["FOREARM", "FOREARM", "FOREARM"])
    storescu(files[:2], gateway.port, GATEWAY_AET)
    gateway.kill()                                   # SIGKILL while the study is incomplete
    incoming = list((gateway.data_dir / "incoming").glob("*/*.dcm"))
    assert len(incoming) == 2, "the first two instances must be on disk, not yet processed"
    gateway.start()
    storescu(files[2:], gateway.port, GATEWAY_AET)
    (sr,) = orthanc.wait_for_sr(dcmread(files[0]).StudyInstanceUID, diagnostics=gateway.logs)
    summary = summarize(sr)
    assert summary["images_scored"] == 3
    assert sorted(i["source"] for i in summary["images"]) == sorted(
        str(dcmread(f).SOPInstanceUID) for f in files)
    assert len(gateway.wait_audit("delivered")) == 1
    assert_no_phi(gateway.log_paths(), [patient])


def test_triton_outage_only_delays_scoring(tiny_repository, orthanc, start_gateway,
                                           tmp_path: Path) -> None:
    from server.launcher import TritonServer

    with TritonServer(tiny_repository, log_path=tmp_path / "triton.log") as server:
        gateway = start_gateway(server.grpc_url, orthanc.destination)
        server.stop()
        patient = SyntheticPatient("Okonkwo-Lindqvist^Ragnhild", "PHI-7731-0005")
        files = make_study(tmp_path / "study", patient, ["SHOULDER"])
        storescu(files, gateway.port, GATEWAY_AET)
        retry = gateway.wait_audit("retry")[0]
        assert retry["stage"] == "pending" and retry["outage"] is True
        server.start()
        orthanc.wait_for_sr(dcmread(files[0]).StudyInstanceUID, diagnostics=gateway.logs)
        assert_no_phi(gateway.log_paths() + [server.log_path], [patient])


def test_permanent_failures_land_in_dead_letter(tiny_triton, orthanc, start_gateway,
                                                tmp_path: Path) -> None:
    # a study whose only radiograph is multi-frame cannot be scored: dead-lettered at once
    gateway = start_gateway(tiny_triton.grpc_url, f"WRONGAET@127.0.0.1:{orthanc.dicom_port}",
                            "--max-attempts", "2")
    patient = SyntheticPatient("Hargreaves^Wilhelmina", "PHI-7731-0006")
    (multi,) = make_study(tmp_path / "multi", patient, ["WRIST"])
    ds = dcmread(multi)
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(multi)
    storescu([multi], gateway.port, GATEWAY_AET)
    dead = gateway.wait_audit("dead")[0]
    assert "multi-frame" in dead["error"]
    # a PACS that keeps rejecting the association (wrong AE title): dead after max attempts
    files = make_study(tmp_path / "ok", patient, ["WRIST"], study_uid=generate_uid())
    storescu(files, gateway.port, GATEWAY_AET)
    second = gateway.wait_audit("dead", count=2)[1]
    assert second["stage"] == "outbox" and "rejected" in second["error"]
    reasons = sorted((gateway.data_dir / "dead").glob("*/reason.json"))
    assert len(reasons) == 2
    assert orthanc.instances(dcmread(files[0]).StudyInstanceUID) == []
    assert_no_phi(gateway.log_paths(), [patient])


def test_out_of_distribution_image_is_not_assessed_by_default(tiny_triton, orthanc,
                                                              start_gateway,
                                                              tmp_path: Path) -> None:
    """The gateway's default OOD policy (refuse): a noise image in a wrist study gets no call;
    the SR reaches the PACS and says "not assessed" with the coded reason; the other image is
    called alone and the study says one image was refused."""
    gateway = start_gateway(tiny_triton.grpc_url, orthanc.destination, "--ood", "refuse")
    patient = SyntheticPatient("Oyelaran^Temperance", "PHI-7731-0021")
    study_uid = generate_uid()
    noise = np.random.default_rng(21).integers(0, 256, (320, 300), dtype=np.uint8)
    files = [make_dx_image(tmp_path / "noise.dcm", patient, noise, "WRIST", study_uid)]
    storescu(files, gateway.port, GATEWAY_AET)
    (sr,) = orthanc.wait_for_sr(study_uid, diagnostics=gateway.logs)
    summary = summarize(sr)
    (image,) = summary["images"]
    assert image["assessment"] == "Not assessed"
    assert image["reason_not_assessed"] == "Out of distribution for the model"
    assert "probability" not in image and image["ood_score"] > image["ood_threshold"]
    assert "probability" not in summary                     # no study call on nothing
    assert any("not assessed" in note for note in summary["not_scored"])
    scored = gateway.wait_audit("scored")[0]
    assert scored["refused"] == 1 and scored["images"][0]["in_distribution"] is False
    assert_no_phi(gateway.log_paths(), [patient])
