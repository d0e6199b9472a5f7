"""The C-STORE/C-ECHO receiver with dcmtk as the peer: AE checks, durable storage, any syntax."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread

from clients.gateway.config import GatewayConfig
from clients.gateway.queue import StudyQueue, study_key
from clients.gateway.scp import StoreSCP
from server.launcher import free_port
from tests.plugins.pacs import (
    GATEWAY_AET,
    MODALITY_AET,
    SyntheticPatient,
    echoscu,
    make_study,
    make_text_sr,
    storescu,
)


@pytest.fixture()
def scp(tmp_path: Path):
    config = GatewayConfig("127.0.0.1:1", "PACS@127.0.0.1:104", ae_title=GATEWAY_AET,
                           host="127.0.0.1", port=free_port(),
                           allowed_calling_aes=[MODALITY_AET], data_dir=tmp_path / "q")
    queue = StudyQueue(config.data_dir)
    server = StoreSCP(config, queue)
    server.start()
    yield config, queue
    server.stop()
    queue.close()


def test_echo_from_allowed_ae(scp) -> None:
    config, _ = scp
    assert echoscu(config.port, GATEWAY_AET).returncode == 0


def test_unknown_calling_ae_and_wrong_called_ae_are_rejected(scp) -> None:
    config, _ = scp
    stranger = echoscu(config.port, GATEWAY_AET, calling_aet="STRANGER")
    assert stranger.returncode != 0 and "Rejected" in stranger.stderr + stranger.stdout
    wrong = echoscu(config.port, "NOTTHEGATEWAY")
    assert wrong.returncode != 0


def test_stored_instances_are_on_disk_unchanged(scp, tmp_path: Path) -> None:
    config, queue = scp
    patient = SyntheticPatient("Scp^Tester", "SCP-0001")
    files = make_study(tmp_path / "s", patient, ["WRIST", "HAND"])
    study_uid = dcmread(files[0]).StudyInstanceUID
    note = make_text_sr(tmp_path / "s", patient, study_uid)
    storescu([*files, note], config.port, GATEWAY_AET)
    stored = sorted((queue.dir("incoming") / study_key(study_uid)).glob("*.dcm"))
    assert len(stored) == 3                      # the non-image object is accepted too
    sent = {str(dcmread(f).SOPInstanceUID): dcmread(f) for f in [*files, note]}
    for path in stored:
        ds = dcmread(path)
        original = sent[str(ds.SOPInstanceUID)]
        original.pop("DataSetTrailingPadding", None)    # never transmitted (PS3.10 7.2)
        assert ds == original
        assert ds.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID


def test_compressed_transfer_syntax_is_kept(scp, tmp_path: Path) -> None:
    config, queue = scp
    (plain,) = make_study(tmp_path / "s", SyntheticPatient("Scp^Jpeg", "SCP-0002"), ["WRIST"])
    jpeg = tmp_path / "jpeg.dcm"
    subprocess.run(["dcmcjpeg", "+e1", str(plain), str(jpeg)], check=True, timeout=120)
    storescu([jpeg], config.port, GATEWAY_AET, options=("-xs",))
    (stored,) = (queue.dir("incoming")).glob("*/*.dcm")
    assert dcmread(stored).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"


def test_deflated_is_not_negotiated_so_no_bomb_is_inflated_here(scp, tmp_path: Path) -> None:
    """A sender offering Deflated (and uncompressed, as DICOM requires) gets an uncompressed
    context: pynetdicom would inflate a deflated data set without a cap."""
    config, queue = scp
    (plain,) = make_study(tmp_path / "s", SyntheticPatient("Scp^Deflate", "SCP-0003"), ["WRIST"])
    deflated = tmp_path / "deflated.dcm"
    subprocess.run(["dcmconv", "+td", str(plain), str(deflated)], check=True, timeout=120)
    assert dcmread(deflated).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1.99"
    storescu([deflated], config.port, GATEWAY_AET, options=("-xd",))
    (stored,) = (queue.dir("incoming")).glob("*/*.dcm")
    assert dcmread(stored).file_meta.TransferSyntaxUID != "1.2.840.10008.1.2.1.99"
