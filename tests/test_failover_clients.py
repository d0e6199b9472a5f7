"""Several Triton endpoints for every client, without a balancer, like
`msk score`: `msk detect --url`, `msk web --triton-url` and `msk gateway --triton-url`
repeated, one endpoint dead (a closed port on loopback) and one a real tritonserver. Every
input must still be scored: the clients spread requests round-robin and fail over with the
same `clients.failover.EndpointPool` as `msk score` (tests/test_scaleout.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from pydicom import dcmread

from clients.gateway.config import build_config
from clients.rows import SHARED_FIELDS
from msk import RESEARCH_USE_NOTICE
from server.launcher import free_port
from tests.msk_process import run_msk
from tests.plugins.pacs import GATEWAY_AET, SyntheticPatient, make_study, storescu
from tests.plugins.web import encode, running_web_app, synthetic_radiograph

pytestmark = pytest.mark.timeout(600)


def _dead_url() -> str:
    """A loopback port nobody listens on: connecting is refused at once, like a dead replica."""
    return f"127.0.0.1:{free_port()}"


def test_detect_with_a_dead_and_a_live_url_scores_every_image(wrist_triton, tmp_path: Path):
    from training.wrist_synthetic import make_wrists

    paths = []
    for i, wrist in enumerate(make_wrists(4, seed=77, sixteen_bit=False)):
        paths.append(tmp_path / f"wrist{i}.png")
        Image.fromarray(wrist.image).save(paths[-1])
    dead = _dead_url()
    result = run_msk("detect", *map(str, paths), "--url", dead, "--url", wrist_triton.grpc_url,
                     cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["input"] for r in rows] == [str(p) for p in paths]
    for row in rows:
        assert set(SHARED_FIELDS) <= set(row) and row["notice"] == RESEARCH_USE_NOTICE
        assert row["error"] is None and row["error_reason"] is None and row["boxes"], row
        assert row["versions"] and row["latency_s"] > 0


def test_detect_with_only_dead_urls_names_the_reason(tmp_path: Path):
    image = tmp_path / "w.png"
    Image.fromarray(synthetic_radiograph(seed=3)).save(image)
    result = run_msk("detect", str(image), "--url", _dead_url(), "--url", _dead_url(),
                     cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert row["error_reason"] == "server_unavailable" and row["input"] == str(image)
    assert row["notice"] == RESEARCH_USE_NOTICE


def test_web_with_a_dead_and_a_live_url_scores_every_upload(web_triton, tmp_path: Path):
    files = [(f"img{i}.png", encode(synthetic_radiograph(seed=40 + i))) for i in range(4)]
    with running_web_app([_dead_url(), web_triton.grpc_url], tmp_path / "web.log") as app:
        status = requests.get(f"{app.url}/api/status", timeout=30).json()
        assert status["reachable"], status
        response = requests.post(f"{app.url}/api/score", timeout=300,
                                 files=[("files", f) for f in files],
                                 data={"body_part": "wrist"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [im["input"] for im in body["images"]] == [name for name, _ in files]
    for image in body["images"]:
        assert set(SHARED_FIELDS) <= set(image) and image["notice"] == RESEARCH_USE_NOTICE
        assert image["error"] is None and 0.0 <= image["probability"] <= 1.0, image
    assert body["study"]["scored"] == len(files)
    assert body["study"]["mixed_body_parts"] is False


def test_gateway_config_accepts_one_url_a_list_or_commas():
    base = {"destination": "PACS@127.0.0.1:104", "accept_any_calling_ae": True}
    assert build_config(base, {"triton_url": "a:1"}).triton_url == ["a:1"]
    assert build_config({**base, "triton_url": ["a:1", "b:2"]}, {}).triton_url == ["a:1", "b:2"]
    assert build_config({**base, "triton_url": "a:1, b:2,a:1"}, {}).triton_url == ["a:1", "b:2"]


def test_gateway_with_a_dead_and_a_live_url_scores_the_study(tiny_triton, orthanc,
                                                             start_gateway, tmp_path: Path):
    gateway = start_gateway(_dead_url(), orthanc.destination,
                            "--triton-url", tiny_triton.grpc_url)
    patient = SyntheticPatient("Fallback^Fiona", "PHI-1500-0001", "19600101")
    files = make_study(tmp_path / "study", patient, ["WRIST", "WRIST", "WRIST"])
    study_uid = dcmread(files[0]).StudyInstanceUID
    storescu(files, gateway.port, GATEWAY_AET)
    orthanc.wait_for_sr(study_uid, diagnostics=gateway.logs)
    audit = [json.loads(line) for line in gateway.audit_path.read_text().splitlines()]
    scored = [e for e in audit if e["event"] == "scored"]
    assert scored and scored[-1]["images_scored"] == 3, audit
    for entry in audit:
        assert set(SHARED_FIELDS) <= set(entry) and entry["notice"] == RESEARCH_USE_NOTICE
    assert scored[-1]["error"] is None and scored[-1]["versions"]
    assert np.isfinite(scored[-1]["probability"]) and scored[-1]["mixed_body_parts"] is False
