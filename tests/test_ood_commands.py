"""The OOD gate as users meet it (issue 21): `msk export --reference/--ood-percentile`,
`msk score --ood flag|refuse` with its studies file, the web API, the SR and the gateway audit.

The repository is the tiny stand-in exported by `msk export --tiny` with the OOD threshold at
the 1st percentile for every body part but the wrist (100th): a noise image named `hand` is
then refused for certain, and a reference image named `wrist` (the demo reference's own
pixels, saved losslessly) is in distribution. What the tests assert is the policy, read
against each row's own `ood_score` and `ood_threshold`, so they do not depend on the weights.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from clients.findings import ImageFinding, ModelProvenance, StudyResult
from clients.sr import build_sr, summarize
from export.manifest import load_manifest
from export.ood_reference import demo_reference
from msk.constants import MURA_ENSEMBLE_MODEL, OOD_REFUSED_REASON
from server.launcher import TritonServer
from tests.msk_process import run_msk
from tests.plugins.pacs import dciodvfy
from tests.plugins.web import running_web_app

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("ood-user")
    images = home / "images"
    images.mkdir()
    reference = next(i for i in demo_reference().images if i.body_part == "wrist")
    Image.fromarray(reference.pixels).save(images / "wrist_like_reference.png")
    noise = np.random.default_rng(5).integers(0, 256, (300, 280), dtype=np.uint8)
    Image.fromarray(noise).save(images / "noise.png")
    Image.fromarray(noise[::-1].copy()).save(images / "noise_hand.png")
    Image.fromarray(np.full((240, 200), 200, np.uint8)).save(images / "flat.png")
    with (home / "manifest.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "study", "body_part"])
        writer.writerow(["images/wrist_like_reference.png", "s1", "wrist"])
        writer.writerow(["images/noise.png", "s1", "wrist"])
        writer.writerow(["images/noise_hand.png", "s2", "hand"])
        writer.writerow(["images/flat.png", "s2", "hand"])
    return home


@pytest.fixture(scope="module")
def exported(home: Path) -> dict:
    res = run_msk("export", "--tiny", "--repository", "repo", "--ood-percentile", "1",
                  "--ood-percentile", "wrist=100", cwd=home)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def server(home: Path, exported) -> TritonServer:
    with TritonServer(home / "repo") as srv:
        yield srv


def test_export_states_the_percentiles_and_the_demo_reference(home: Path, exported) -> None:
    manifest = load_manifest(home / "repo")
    ood = manifest["versions"][f"{MURA_ENSEMBLE_MODEL}/{exported['version']}"]["ood"]
    assert ood["percentiles"]["wrist"] == 100.0 and ood["percentiles"]["hand"] == 1.0
    assert ood["default_percentile"] == 1.0
    assert ood["thresholds"]["hand"] < ood["thresholds"]["wrist"]
    assert ood["reference"]["kind"] == "demo-synthetic"
    again = run_msk("export", "--tiny", "--repository", "repo", "--ood-percentile", "1",
                    "--ood-percentile", "wrist=100", cwd=home)
    assert again.returncode == 0 and json.loads(again.stdout)["version"] == exported["version"]


def test_export_with_a_reference_folder_and_bad_percentiles(home: Path) -> None:
    folder = home / "refs"
    folder.mkdir()
    for image in demo_reference().images[:12]:
        Image.fromarray(image.pixels).save(folder / f"{image.sha256[:8]}.png")
    res = run_msk("export", "--tiny", "--repository", "given", "--reference", "refs", cwd=home)
    assert res.returncode == 0, res.stderr[-3000:]
    ood = load_manifest(home / "given")["versions"][f"{MURA_ENSEMBLE_MODEL}/1"]["ood"]
    assert ood["reference"]["kind"] == "given" and ood["reference"]["images"] == 12
    bad = run_msk("export", "--tiny", "--repository", "bad", "--ood-percentile", "knee=90",
                  cwd=home)
    assert bad.returncode == 2 and "unknown body part 'knee'" in bad.stderr
    few = run_msk("export", "--tiny", "--repository", "few", "--reference",
                  "images/noise.png", cwd=home)
    assert few.returncode == 2 and "at least" in few.stderr, few.stderr[-2000:]
    assert not (home / "few" / "manifest.json").exists()


def _rows(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _check_policy(rows: list[dict], refuse: bool) -> None:
    for row in rows:
        assert row["ood_score"] is not None and row["ood_threshold"] is not None
        out = row["ood_score"] > row["ood_threshold"]
        assert row["in_distribution"] is (not out)
        assert 0.0 <= row["member_spread"] <= 1.0
        if out and refuse:
            assert row["error_reason"] == OOD_REFUSED_REASON and row["probability"] is None
            assert row["abnormal"] is None and "not assessed" in row["error"]
        else:
            assert row["error"] is None and row["probability"] is not None


@pytest.mark.parametrize("policy", ["flag", "refuse"])
def test_score_policy_rows_and_studies(home: Path, server, policy: str) -> None:
    args = ["score", "manifest.csv", "--url", server.grpc_url, "--out", f"{policy}.jsonl",
            "--studies", f"{policy}-studies.csv", "--no-progress", "--no-stdout"]
    if policy == "refuse":
        args += ["--ood", "refuse"]
    res = run_msk(*args, cwd=home)
    assert res.returncode in (0, 1), res.stderr[-3000:]
    rows = _rows((home / f"{policy}.jsonl").read_text())
    assert len(rows) == 4
    _check_policy(rows, refuse=policy == "refuse")
    by = {(r["input"], r["study"]): r for r in rows}
    assert by[("images/wrist_like_reference.png", "s1")]["in_distribution"] is True
    assert by[("images/noise_hand.png", "s2")]["in_distribution"] is False
    studies = {r["study"]: r for r in csv.DictReader(
        (home / f"{policy}-studies.csv").open())}
    refused_s2 = sum(1 for (_, s), r in by.items() if s == "s2" and r["in_distribution"] is False)
    if policy == "refuse":
        assert studies["s2"]["refused"] == str(refused_s2) and studies["s2"]["probability"] == ""
        assert "out of distribution" in studies["s2"]["error"]
        s1_ok = [r for (_, s), r in by.items() if s == "s1" and r["probability"] is not None]
        assert float(studies["s1"]["probability"]) == pytest.approx(
            np.mean([r["probability"] for r in s1_ok]), abs=1e-5)
        assert int(studies["s1"]["refused"]) == 2 - len(s1_ok)
    else:
        assert studies["s2"]["refused"] == "0" and studies["s2"]["probability"] != ""
        assert studies["s2"]["out_of_distribution"] == str(refused_s2)


def test_score_help_names_the_policy(home: Path) -> None:
    res = run_msk("score", "--help", cwd=home)
    assert "--ood {flag,refuse}" in res.stdout and OOD_REFUSED_REASON in res.stdout


def test_web_api_says_it(home: Path, server, tmp_path: Path) -> None:
    with running_web_app(server.grpc_url, tmp_path / "web.log") as app:
        files = [("files", ("noise.png", (home / "images/noise.png").read_bytes(), "image/png")),
                 ("files", ("wrist.png", (home / "images/wrist_like_reference.png").read_bytes(),
                            "image/png"))]
        reply = requests.post(f"{app.url}/api/score", files=files,
                              data={"body_part": "hand"}, timeout=120)
    assert reply.status_code == 200, reply.text[:2000]
    images = reply.json()["images"]
    assert {im["input"] for im in images} == {"noise.png", "wrist.png"}
    for image in images:
        assert {"ood_score", "in_distribution", "ood_threshold", "member_spread"} <= set(image)
    noise = next(im for im in images if im["input"] == "noise.png")
    assert noise["in_distribution"] is False and noise["probability"] is not None   # flag
    assert reply.json()["study"]["out_of_distribution"] >= 1


def test_web_refuse_policy_gives_no_call(home: Path, server, tmp_path: Path) -> None:
    """`msk web --ood refuse`: the refused image is an error row "out_of_distribution" that keeps
    its trust fields, and the study is called on the other image (as `msk score --ood refuse`)."""
    with running_web_app(server.grpc_url, tmp_path / "web.log", ["--ood", "refuse"]) as app:
        files = [("files", ("noise.png", (home / "images/noise.png").read_bytes(), "image/png")),
                 ("files", ("wrist.png", (home / "images/wrist_like_reference.png").read_bytes(),
                            "image/png"))]
        reply = requests.post(f"{app.url}/api/score", files=files,
                              data={"body_part": "wrist"}, timeout=120)
        noise_alone = requests.post(f"{app.url}/api/score", files=files[:1],
                                    data={"body_part": "hand"}, timeout=120)
    assert reply.status_code == 200, reply.text[:2000]
    body = reply.json()
    assert body["ood_policy"] == "refuse"
    for image in body["images"]:
        assert image["ood_score"] is not None and image["ood_threshold"] is not None
        refused = image["ood_score"] > image["ood_threshold"]
        assert (image["error_reason"] == OOD_REFUSED_REASON) == refused, image
        assert (image.get("probability") is None) == refused
    wrist = next(im for im in body["images"] if im["input"] == "wrist.png")
    assert wrist["in_distribution"] is True and wrist["probability"] is not None
    # the hand threshold is the 1st percentile: noise is refused for certain
    (noise,) = noise_alone.json()["images"]
    assert noise["error_reason"] == OOD_REFUSED_REASON and noise["in_distribution"] is False
    assert noise.get("probability") is None and noise["member_spread"] is not None
    study = noise_alone.json()["study"]
    assert study["refused"] == 1 and study["probability"] is None


def test_web_help_names_the_policy(home: Path) -> None:
    res = run_msk("web", "--help", cwd=home)
    assert res.returncode == 0
    assert "--ood {flag,refuse}" in res.stdout and OOD_REFUSED_REASON in res.stdout


def test_sr_says_not_assessed_in_coded_form(tmp_path: Path) -> None:
    from pydicom import Dataset
    from pydicom.uid import generate_uid

    dx = "1.2.840.10008.5.1.4.1.1.1.1"
    source = Dataset()
    source.SOPClassUID, source.SOPInstanceUID = dx, generate_uid()
    source.StudyInstanceUID, source.SeriesInstanceUID = generate_uid(), generate_uid()
    source.PatientName, source.PatientID = "Test^OOD", "OOD-1"
    source.StudyDate, source.StudyTime, source.AccessionNumber = "20260101", "120000", "A1"
    source.StudyID, source.ReferringPhysicianName, source.PatientBirthDate = "1", "", ""
    source.PatientSex = "O"
    members = {"densenet169_a": 0.3, "densenet169_b": 0.2, "resnet101_a": 0.4,
               "resnet101_b": 0.3}
    scored = ImageFinding(dx, generate_uid(), source.SeriesInstanceUID, "wrist", 0.3, members,
                          False, threshold=0.5, ood_score=0.9, ood_threshold=2.0,
                          in_distribution=True, member_spread=0.2)
    refused = ImageFinding(dx, generate_uid(), source.SeriesInstanceUID, "wrist",
                           error="not assessed: out of distribution", ood_score=9.0,
                           ood_threshold=2.0, in_distribution=False, member_spread=0.5,
                           refused=True)
    models = [ModelProvenance("mura_ensemble", "1")] + [
        ModelProvenance(m, "1", f"{i}" * 64) for i, m in enumerate(members)]
    result = StudyResult.of([scored, refused], models, default_threshold=0.5)
    sr = build_sr(source, result)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert [p for p in dciodvfy(path) if "99MSK" not in p] == []
    summary = summarize(sr)
    assert summary["refused_images"] == 1.0 and summary["probability"] == pytest.approx(0.3)
    by_source = {i["source"]: i for i in summary["images"]}
    not_assessed = by_source[refused.sop_instance_uid]
    assert not_assessed["assessment"] == "Not assessed"
    assert not_assessed["reason_not_assessed"] == "Out of distribution for the model"
    assert "probability" not in not_assessed and not_assessed["ood_score"] == 9.0
    assert by_source[scored.sop_instance_uid]["ood_score"] == pytest.approx(0.9)
    assert any("not assessed" in note for note in summary["not_scored"])


def test_gateway_refuses_by_default_and_can_flag(home: Path) -> None:
    base = ["gateway", "--print-config", "--triton-url", "127.0.0.1:8001", "--destination",
            "PACS@127.0.0.1:104", "--allowed-calling-ae", "PACS"]
    default = run_msk(*base, cwd=home)
    assert default.returncode == 0, default.stderr
    assert json.loads(default.stdout)["ood"] == "refuse"
    flag = run_msk(*base, "--ood", "flag", cwd=home)
    assert flag.returncode == 0 and json.loads(flag.stdout)["ood"] == "flag"
    wrong = run_msk(*base, "--ood", "ignore", cwd=home)
    assert wrong.returncode == 2 and "invalid choice" in wrong.stderr
