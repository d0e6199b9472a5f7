"""DICOMweb in and out, against the real Orthanc with its DICOMweb plugin (Debian
orthanc-dicomweb) and the real tritonserver (tiny stand-in models):

* a study is sent to `msk gateway --dicomweb-port N` by STOW-RS from dicomweb-client (bearer
  token); the gateway scores it and delivers the TID 1500 SR and the heatmap Segmentation to
  Orthanc by STOW-RS (`--destination-dicomweb`, basic auth from the environment);
* the results come back from Orthanc by QIDO-RS (DICOM JSON with the expected tags) and WADO-RS,
  pass dciodvfy, and highdicom reads every probability, call and the heatmap back;
* senders without a token are refused; an outage of the DICOMweb destination only delays.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

from clients.heatmap_seg import read_heatmap
from clients.mura import MuraClient
from clients.sr import (
    COMPREHENSIVE_3D_SR_STORAGE,
    SEGMENTATION_STORAGE,
    summarize,
)
from msk.imaging import load_grayscale
from server.launcher import free_port
from tests.plugins.pacs import (
    GATEWAY_AET,
    Orthanc,
    SyntheticPatient,
    assert_no_phi,
    dciodvfy_errors,
    make_study,
    storescu,
)

pytestmark = pytest.mark.timeout(600)
TOKEN = "stow-token-" + "7" * 20


def _pacs_env(orthanc: Orthanc) -> dict[str, str]:
    return {"MSK_DICOMWEB_USER": orthanc.user, "MSK_DICOMWEB_PASSWORD": orthanc.password,
            "MSK_GATEWAY_STOW_TOKENS": f"other-token,{TOKEN}"}


def _wait_series(orthanc: Orthanc, study_uid: str, modality: str, diagnostics,
                 timeout: float = 180.0) -> list[dict]:
    """QIDO-RS until the study has a series of `modality` in Orthanc."""
    client = orthanc.dicomweb_client()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = client.search_for_series(study_uid, search_filters={"Modality": modality})
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"no {modality} series in Orthanc after {timeout} s\n{diagnostics()}")


def _value(json_dataset: dict, tag: str):
    return json_dataset[tag]["Value"][0]


def test_stow_in_stow_out_qido_wado_back(tiny_triton, orthanc_dicomweb, start_gateway,
                                         tmp_path: Path) -> None:
    orthanc = orthanc_dicomweb
    stow_port = free_port()
    gateway = start_gateway(tiny_triton.grpc_url, orthanc.dicomweb_url, "--dicomweb-port",
                            str(stow_port), "--heatmaps", env=_pacs_env(orthanc))
    patient = SyntheticPatient("Dicomweb^Theodora", "PHI-7731-0201", "19480704")
    files = make_study(tmp_path / "study", patient, ["WRIST", "WRIST"])
    datasets = [dcmread(f) for f in files]
    study_uid = str(datasets[0].StudyInstanceUID)
    url = f"http://127.0.0.1:{stow_port}/dicomweb"

    # no token: refused, nothing queued
    with pytest.raises(requests.HTTPError) as refused:
        DICOMwebClient(url).store_instances(datasets)
    assert refused.value.response.status_code == 401
    wrong = requests.Session()
    wrong.headers["Authorization"] = "Bearer not-a-token"
    with pytest.raises(requests.HTTPError):
        DICOMwebClient(url, session=wrong).store_instances(datasets)
    assert list((gateway.data_dir / "incoming").glob("*/*.dcm")) == []

    # with the token: stored (PS3.18 response lists every instance)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    response = DICOMwebClient(url, session=session).store_instances(datasets)
    assert sorted(r.ReferencedSOPInstanceUID for r in response.ReferencedSOPSequence) == \
        sorted(str(d.SOPInstanceUID) for d in datasets)
    assert "FailedSOPSequence" not in response

    # the SR comes back from Orthanc by QIDO-RS as DICOM JSON with the expected tags
    (sr_series,) = _wait_series(orthanc, study_uid, "SR", gateway.logs)
    assert _value(sr_series, "00080060") == "SR"
    assert _value(sr_series, "0020000D") == study_uid
    assert _value(sr_series, "0008103E").startswith("AI RESULTS - RESEARCH USE ONLY")
    series_uid = _value(sr_series, "0020000E")
    client = orthanc.dicomweb_client()
    (instance,) = client.search_for_instances(study_uid, series_uid)
    sop_uid = _value(instance, "00080018")
    assert _value(instance, "00080016") == COMPREHENSIVE_3D_SR_STORAGE
    metadata = client.retrieve_instance_metadata(study_uid, series_uid, sop_uid)
    assert _value(metadata, "0040A493") == "UNVERIFIED"           # VerificationFlag
    template = _value(metadata, "0040A504")                         # ContentTemplateSequence
    assert _value(template, "0040DB00") == "1500"                   # TID 1500
    # ... and by WADO-RS as DICOM: valid, and highdicom reads the scores back
    sr = client.retrieve_instance(study_uid, series_uid, sop_uid)
    assert dciodvfy_errors(sr, tmp_path) == []
    summary = summarize(sr)
    images = [load_grayscale(f) for f in files]
    with MuraClient(tiny_triton.grpc_url) as mura:
        direct = mura.score(images, body_parts=["wrist"] * len(images))
    expected = float(np.mean([r.probability for r in direct]))
    threshold = float(np.mean([r.threshold for r in direct]))
    assert summary["probability"] == pytest.approx(expected, abs=2e-6)
    assert summary["operating_point"] == pytest.approx(threshold, abs=1e-6)
    assert summary["call"] == ("Abnormal" if expected >= threshold else "Normal")
    for image, result in zip(summary["images"], direct, strict=True):
        assert image["probability"] == pytest.approx(result.probability, abs=2e-6)
        assert image["call"] == ("Abnormal" if result.abnormal else "Normal")
        assert image["operating_point"] == pytest.approx(result.threshold, abs=1e-6)

    # the heatmap Segmentations: one per scored image, each on its source image
    (seg_series,) = _wait_series(orthanc, study_uid, "SEG", gateway.logs)
    seg_uid = _value(seg_series, "0020000E")
    segs = client.retrieve_series(study_uid, seg_uid)
    assert len(segs) == 2
    sources = set()
    for seg in segs:
        assert seg.SOPClassUID == SEGMENTATION_STORAGE
        assert dciodvfy_errors(seg, tmp_path) == []
        source_uid, activation = read_heatmap(seg)
        sources.add(source_uid)
        assert activation.shape == (datasets[0].Rows, datasets[0].Columns)
        assert 0.0 <= float(activation.min()) <= float(activation.max()) <= 1.0
    assert sources == {str(d.SOPInstanceUID) for d in datasets}

    (delivered,) = gateway.wait_audit("delivered")
    assert delivered["destination"] == orthanc.dicomweb_url
    assert delivered["result_uids"]["sr_sop_instance_uid"] == sop_uid
    assert_no_phi(gateway.log_paths(), [patient])


def test_dicomweb_destination_outage_only_delays(tiny_triton, orthanc_dicomweb, start_gateway,
                                                 tmp_path: Path) -> None:
    orthanc = orthanc_dicomweb
    gateway = start_gateway(tiny_triton.grpc_url, orthanc.dicomweb_url,
                            env=_pacs_env(orthanc))
    orthanc.stop()
    patient = SyntheticPatient("Outage^Bartholomew", "PHI-7731-0202")
    files = make_study(tmp_path / "study", patient, ["ELBOW"])
    storescu(files, gateway.port, GATEWAY_AET)                  # C-STORE in, STOW-RS out
    retry = gateway.wait_audit("retry")[0]
    assert retry["stage"] == "outbox" and retry["outage"] is True
    assert "STOW-RS" in retry["error"]
    orthanc.start()
    _wait_series(orthanc, str(dcmread(files[0]).StudyInstanceUID), "SR", gateway.logs)
    (delivered,) = gateway.wait_audit("delivered")
    assert delivered["delivery_attempts"] >= 2
    assert_no_phi(gateway.log_paths(), [patient])


def test_wrong_credentials_for_the_destination_are_a_failure_not_an_outage(
        tiny_triton, orthanc_dicomweb, start_gateway, tmp_path: Path) -> None:
    orthanc = orthanc_dicomweb
    env = {**_pacs_env(orthanc), "MSK_DICOMWEB_PASSWORD": "wrong"}
    gateway = start_gateway(tiny_triton.grpc_url, orthanc.dicomweb_url, "--max-attempts", "2",
                            env=env)
    patient = SyntheticPatient("Creds^Wrong", "PHI-7731-0203")
    files = make_study(tmp_path / "study", patient, ["HAND"])
    storescu(files, gateway.port, GATEWAY_AET)
    dead = gateway.wait_audit("dead")[0]
    assert dead["stage"] == "outbox" and "HTTP 401" in dead["error"]
    assert orthanc.instances(str(dcmread(files[0]).StudyInstanceUID)) == []
    assert_no_phi(gateway.log_paths(), [patient])
