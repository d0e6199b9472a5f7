"""Every `msk` subcommand, run the way the README and docs/ show it.

Each command runs as `.venv/bin/msk ...` in a process, from a fresh working directory, with
relative paths and default names (`model_repository`, `samples/`, `runs/...`), against the real
tritonserver. Each test asserts on what the command printed, not only on its exit code: the
README's first command once failed on a fresh clone while every in-process test stayed green.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clients.rows import TRUST_FIELDS
from export.model_specs import OPENVINO_ARCHITECTURES
from msk import RESEARCH_USE_NOTICE
from msk.constants import MURA_ARCHITECTURES, MURA_MEMBERS, MURA_TINY_ARCHITECTURE
from server.launcher import free_ports
from tests.msk_process import MskProcess, run_msk
from tests.plugins.object_store import BUCKET

pytestmark = pytest.mark.timeout(1800)


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """The user's working directory, with a few radiographs in `images/`."""
    from msk.samples import radiograph

    home = tmp_path_factory.mktemp("user")
    for i, name in enumerate(("images/elbow.png", "images/hand.png", "images/more/wrist.png")):
        path = home / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((radiograph(300 + 40 * i, 260, i) * 255).astype(np.uint8)).save(path)
    return home


def test_doctor_before_anything_is_built(home: Path) -> None:
    res = run_msk("doctor", cwd=home)
    assert res.returncode == 0, res.stderr
    assert "tritonserver: " in res.stdout and "triton_python_backend_stub" not in res.stderr
    assert "repository: model_repository does not exist yet" in res.stdout


@pytest.fixture(scope="module")
def exported(home: Path, wrist_ci_models) -> dict:
    """`msk export` (default repository), the same again, then the wrist detectors added."""
    first = run_msk("export", cwd=home)
    digest = _tree_digest(home / "model_repository")
    second = run_msk("export", cwd=home)
    digest_second = _tree_digest(home / "model_repository")
    for key in ("joints", "bones"):
        shutil.copy2(wrist_ci_models.weights[key], home / f"{key}.pt")
    wrist = run_msk("export", "--wrist-joints", "joints.pt", "--wrist-bones", "bones.pt",
                    cwd=home)
    return {"first": first, "second": second, "digest_after_first": digest,
            "digest_after_second": digest_second, "wrist": wrist}


def test_export_default_repository_then_again_adds_no_version(home: Path, exported) -> None:
    first, second = exported["first"], exported["second"]
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads(first.stdout) == {"repository": "model_repository", "version": 1}
    for member in MURA_MEMBERS:
        assert (home / "model_repository" / member / "1" / "model.onnx").is_file()
        assert not (home / "model_repository" / member / "2").exists()
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout) == {"repository": "model_repository", "version": 1}
    assert "already serves these untrained-demo weights as version 1" in second.stderr
    assert exported["digest_after_first"] == exported["digest_after_second"]
    wrist = exported["wrist"]
    assert wrist.returncode == 0, wrist.stderr[-3000:]
    assert (home / "model_repository" / "wrist_detect" / "1").is_dir()
    doctor = run_msk("doctor", cwd=home)
    assert doctor.returncode == 0, doctor.stdout
    assert "repository: model_repository ok (MURA versions [1], wrist versions [1])" in \
        doctor.stdout


def _threads(repository: Path, model: str) -> str | None:
    """The intra_op_thread_count a model's config gives ONNX Runtime (None: not set)."""
    import re

    text = (repository / model / "config.pbtxt").read_text()
    found = re.search(r'key: "(?:intra_op_thread_count|INFERENCE_NUM_THREADS)" '
                      r'value: \{ string_value: "(\d+)" \}', text)
    return found.group(1) if found else None


def test_export_for_a_bigger_cpu_host_changes_threads_not_versions(home: Path, exported) -> None:
    """`--cpu-cores 8 --cpu-runtime openvino`: the four backbones get 2 threads each (the
    DenseNets on OpenVINO) and the two wrist detectors 4, in the same versions; exporting again
    without them gives the reference CPU's 1 and 1 on ONNX Runtime."""
    wrist = ("--wrist-joints", "joints.pt", "--wrist-bones", "bones.pt")
    first = run_msk("export", "--tiny", "--repository", "host8", *wrist, cwd=home)
    assert first.returncode == 0, first.stderr[-3000:]
    assert _threads(home / "host8", MURA_MEMBERS[0]) == "1"
    for cores, backbone, detector in (("8", "2", "4"), (None, "1", "1")):
        extra = ("--cpu-cores", cores, "--cpu-runtime", "openvino") if cores else ()
        again = run_msk("export", "--tiny", "--repository", "host8", *wrist, *extra, cwd=home)
        assert again.returncode == 0, again.stderr[-3000:]
        assert json.loads(again.stdout)["version"] == 1
        assert "already serves these wrist weights as version 1" in again.stderr
        for member in MURA_MEMBERS:
            text = (home / "host8" / member / "config.pbtxt").read_text()
            on_openvino = bool(cores) and MURA_ARCHITECTURES[member] in OPENVINO_ARCHITECTURES
            assert ('backend: "openvino"' in text) == on_openvino, (cores, member)
            assert _threads(home / "host8", member) == backbone, (cores, member)
        for detector_model in ("wrist_joints", "wrist_bones"):
            assert _threads(home / "host8", detector_model) == detector, (cores, detector_model)
        assert _threads(home / "host8", "mura_preprocess") is None
        assert not (home / "host8" / MURA_MEMBERS[0] / "2").exists()
    refused = run_msk("export", "--target", "gpu", "--cpu-cores", "8", cwd=home)
    assert refused.returncode == 2
    assert "--cpu-cores and --cpu-runtime are for --target cpu" in refused.stderr


@pytest.fixture(scope="module")
def served(home: Path, exported) -> dict:
    """`msk serve` on the exported repository; stopped with SIGTERM at the end."""
    assert exported["wrist"].returncode == 0
    proc = MskProcess("serve", "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0",
                      cwd=home)
    ready = proc.wait_for(r"msk serve: ready  grpc=(\S+)  http=(\S+)")
    yield {"proc": proc, "grpc": ready.group(1), "http": ready.group(2)}
    assert proc.stop(signal.SIGTERM) == 0, proc.output()[-3000:]
    assert "msk serve: stopped" in proc.output()


def test_serve_is_ready_then_stops_on_sigterm(served: dict) -> None:
    import urllib.request

    with urllib.request.urlopen(f"{served['http']}/v2/health/ready", timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"{served['http']}/v2/models/mura_ensemble", timeout=10) as r:
        assert json.load(r)["name"] == "mura_ensemble"


def _scored(rows: list[dict], expected: set[str]) -> None:
    assert {r["input"] for r in rows} == expected
    for row in rows:
        assert row["error"] is None, row
        assert 0.0 <= row["probability"] <= 1.0 and row["notice"] == RESEARCH_USE_NOTICE


def test_score_files_folder_glob_and_resumable_csv(home: Path, served: dict) -> None:
    url = ["--url", served["grpc"], "--no-progress"]
    files = run_msk("score", "images/elbow.png", "images/hand.png", *url, cwd=home)
    assert files.returncode == 0, files.stderr[-3000:]
    _scored(_json_lines(files.stdout), {"images/elbow.png", "images/hand.png"})

    folder = run_msk("score", "images", *url, cwd=home)
    assert folder.returncode == 0, folder.stderr[-3000:]
    _scored(_json_lines(folder.stdout),
            {"images/elbow.png", "images/hand.png", "images/more/wrist.png"})

    glob = run_msk("score", "images/*.png", *url, cwd=home)
    assert glob.returncode == 0, glob.stderr[-3000:]
    _scored(_json_lines(glob.stdout), {"images/elbow.png", "images/hand.png"})

    first = run_msk("score", "images", "--out", "x.csv", "--resume", *url, cwd=home)
    assert first.returncode == 0, first.stderr[-3000:]
    with (home / "x.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["input"] for r in rows) == sorted(
        ["images/elbow.png", "images/hand.png", "images/more/wrist.png"])
    again = run_msk("score", "images", "--out", "x.csv", "--resume", *url, cwd=home)
    assert again.returncode == 0, again.stderr[-3000:]
    with (home / "x.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 3           # nothing scored twice
    summary = json.loads(again.stderr.split("msk score: summary ", 1)[1].splitlines()[0])
    assert summary["skipped_resume"] == 3 and summary["scored"] == 0, summary


def test_detect_wrist_structures(home: Path, served: dict) -> None:
    from training.wrist_synthetic import make_wrist

    Image.fromarray(make_wrist(4321, 0, sixteen_bit=False).image).save(home / "wrist.png")
    res = run_msk("detect", "wrist.png", "--url", served["grpc"], "--overlay-dir", "overlays",
                  cwd=home)
    assert res.returncode == 0, res.stderr[-3000:]
    (row,) = _json_lines(res.stdout)
    assert row["input"] == "wrist.png" and row.get("error") is None
    assert isinstance(row["boxes"], list) and row["width"] > 0 and row["versions"]
    # the trust fields are MURA's (docs/outputs.md says why a detector row has none)
    assert not set(TRUST_FIELDS) & set(row), row
    assert (home / "overlays").is_dir() and list((home / "overlays").iterdir())


def test_web_answers_a_score_request(home: Path, served: dict) -> None:
    import requests

    (port,) = free_ports(1)
    with MskProcess("web", "--port", str(port), "--triton-url", served["grpc"],
                    cwd=home) as web:
        web.wait_for(r"Uvicorn running on|Application startup complete", timeout=120)
        with (home / "images" / "elbow.png").open("rb") as fh:
            reply = requests.post(f"http://127.0.0.1:{port}/api/score",
                                  files=[("files", ("elbow.png", fh, "image/png"))],
                                  data={"body_part": "elbow"}, timeout=120)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["notice"] == RESEARCH_USE_NOTICE and body["study"]["scored"] == 1
        assert 0.0 <= body["study"]["probability"] <= 1.0
        # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught
        assert web.stop() in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in web.output()


def test_gateway_answers_an_echo(home: Path, served: dict) -> None:
    import requests
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    port, stow_port = free_ports(2)
    with MskProcess("gateway", "--ae-title", "MSKTRITON", "--port", str(port), "--triton-url",
                    served["grpc"], "--destination", "PACS@127.0.0.1:1", "--data-dir",
                    "gateway-data", "--allowed-calling-ae", "MODALITY", "--dicomweb-port",
                    str(stow_port), "--dicomweb-allowed-client", "127.0.0.1", "--heatmaps",
                    "--shared-queue", "--ready-file", "gateway.ready", cwd=home) as gateway:
        deadline = time.monotonic() + 120
        while not (home / "gateway.ready").exists():
            assert gateway.proc.poll() is None, gateway.output()[-3000:]
            assert time.monotonic() < deadline, "the gateway wrote no ready file"
            time.sleep(0.2)
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="MSKTRITON")
        assert assoc.is_established
        status = assoc.send_c_echo()
        assoc.release()
        assert status.Status == 0x0000
        # The STOW-RS door answers too: an empty multipart body is refused with a reason.
        reply = requests.post(f"http://127.0.0.1:{stow_port}/dicomweb/studies", data=b"",
                              headers={"Content-Type": "multipart/related; type="
                                       '"application/dicom"; boundary=x'}, timeout=30)
        assert 400 <= reply.status_code < 500, reply.text
        assert gateway.stop() == 0, gateway.output()[-3000:]


@pytest.fixture(scope="module")
def mura_run(home: Path) -> dict:
    """`msk train mura` then `msk evaluate mura` on a tiny synthetic MURA, tiny backbones."""
    from training.mura_synthetic import SyntheticSpec, generate

    generate(home / "data", SyntheticSpec(train_patients=16, valid_patients=8, min_side=96,
                                          max_side=128, seed=3))
    recipes = []
    for member in MURA_MEMBERS:
        recipe = home / "recipes" / f"{member}.yaml"
        recipe.parent.mkdir(exist_ok=True)
        from training.mura_train import load_recipe

        spec = load_recipe(f"mura_{member}").to_dict() | {
            "architecture": MURA_TINY_ARCHITECTURE, "image_size": 64, "epochs": 1,
            "num_workers": 0}
        recipe.write_text(json.dumps(spec))                  # JSON is valid YAML
        recipes += ["--recipe", f"recipes/{member}.yaml"]
    train = run_msk("train", "mura", "--data", "data", *recipes, "--out", "runs/mura",
                    "--image-size", "64", "--device", "cpu", "--threads", "2", "--workers",
                    "0", "--test-fraction", "0.25",
                    "--no-progress", cwd=home)
    evaluate = run_msk("evaluate", "mura", "--data", "data", "--checkpoints", "runs/mura",
                       "--out", "runs/mura/report", "--test-fraction", "0.25", "--bootstrap",
                       "20", "--fit-operating-points", "--operating-point", "sensitivity",
                       "--target-sensitivity", "0.9", cwd=home)
    return {"train": train, "evaluate": evaluate}


def test_train_and_evaluate_mura(home: Path, mura_run: dict) -> None:
    train, evaluate = mura_run["train"], mura_run["evaluate"]
    assert train.returncode == 0, train.stderr[-3000:]
    members = {row["member"] for row in _json_lines(train.stdout) if "member" in row}
    assert members == set(MURA_MEMBERS)
    for member in MURA_MEMBERS:
        assert (home / "runs" / "mura" / f"{member}.pt").is_file()
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    report = home / "runs" / "mura" / "report" / "report.md"
    assert report.is_file() and "| auroc |" in report.read_text()
    assert "| ensemble | study |" in report.read_text()
    calibration = json.loads((home / "runs" / "mura" / "ensemble_calibration.json").read_text())
    assert set(calibration["operating_points"]) >= {"default"}
    promoted = run_msk("export", "--checkpoints", "runs/mura", "--repository", "trained",
                       cwd=home)
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    assert json.loads(promoted.stdout) == {"repository": "trained", "version": 1}
    # The OOD statistics were fitted on the training images `msk train mura` listed.
    manifest = json.loads((home / "trained" / "manifest.json").read_text())
    reference = manifest["versions"]["mura_ensemble/1"]["ood"]["reference"]
    listed = (home / "runs" / "mura" / "reference_images.csv").read_text().splitlines()
    assert reference["kind"] == "training-images" and reference["images"] == len(listed) - 1


def test_evaluate_mura_reports_ood_and_member_spread(home: Path, mura_run: dict) -> None:
    """`msk evaluate mura --ood-set DIR` (issue 21, item 7): the OOD score's AUROC and FPR at
    95 % TPR against the evaluated split, with statistics fitted on the training images that
    `msk train mura` listed (by `msk export`'s own fit), and the members' spread vs wrong calls."""
    assert mura_run["train"].returncode == 0, mura_run["train"].stderr[-3000:]
    plain = json.loads((home / "runs" / "mura" / "report" / "report.json").read_text())
    assert "ood" not in plain and plain["member_spread"]["n"] == plain["meta"]["images"]
    ood_dir = home / "ood"
    ood_dir.mkdir(exist_ok=True)
    rng = np.random.default_rng(11)
    for k in range(12):
        Image.fromarray(rng.integers(0, 256, (96 + 4 * k, 110), dtype=np.uint8)).save(
            ood_dir / f"noise{k}.png")
    res = run_msk("evaluate", "mura", "--data", "data", "--checkpoints", "runs/mura", "--out",
                  "runs/mura/report-ood", "--test-fraction", "0.25", "--bootstrap", "20",
                  "--ood-set", "ood", "--ood-reference", "runs/mura/reference_images.csv",
                  cwd=home)
    assert res.returncode == 0, res.stderr[-3000:]
    line = json.loads(res.stdout.strip().splitlines()[-1])
    report = json.loads((home / "runs" / "mura" / "report-ood" / "report.json").read_text())
    ood = report["ood"]
    assert line["ood"]["n_out"] == ood["n_out"] == 12
    assert ood["n_in"] == report["meta"]["images"]
    listed = (home / "runs" / "mura" / "reference_images.csv").read_text().splitlines()
    assert ood["reference_images"] == len(listed) - 1 and ood["reference_kind"] == "given"
    assert 0.5 < ood["auroc"] <= 1.0 and 0.0 <= ood["fpr_at_95_tpr"] <= 1.0   # noise is unlike
    assert 0.0 <= ood["flagged_in"] <= 1.0 and ood["percentile"] == 99.0
    spread = report["member_spread"]
    assert sum(b["n"] for b in spread["bins"]) == report["meta"]["images"]
    text = (home / "runs" / "mura" / "report-ood" / "report.md").read_text()
    assert "## Out-of-distribution detection" in text and "## Member spread vs wrong calls" in text
    # a folder that holds no image is a usage error, not a report
    (home / "empty").mkdir(exist_ok=True)
    empty = run_msk("evaluate", "mura", "--data", "data", "--checkpoints", "runs/mura", "--out",
                    "runs/mura/report-none", "--ood-set", "empty", cwd=home)
    assert empty.returncode == 2 and "--ood-set" in empty.stderr
    helped = run_msk("evaluate", "mura", "--help", cwd=home)
    assert "--ood-set DIR|CSV" in helped.stdout and "--ood-reference DIR|CSV" in helped.stdout


def test_publish_a_repository_to_object_storage(home: Path, s3) -> None:
    """`msk publish DIR s3://...` as docs/scale-out.md shows it (a tiny repository: the demo's
    weights would only make the upload slower); the second time uploads nothing."""
    endpoint, client = s3
    built = run_msk("export", "--tiny", "--repository", "to_publish", cwd=home)
    assert built.returncode == 0, built.stderr[-3000:]
    url = f"s3://{endpoint}/{BUCKET}/msk/cpu"
    first = run_msk("publish", "to_publish", url, cwd=home)
    assert first.returncode == 0, first.stderr[-3000:]
    release = json.loads(first.stdout)
    assert release["repository"] == f"{url}/releases/{release['release']}"
    assert release["uploaded"] is True
    current = json.loads(client.get_object(Bucket=BUCKET, Key="msk/cpu/CURRENT")["Body"].read())
    assert current["release"] == release["release"]
    again = run_msk("publish", "to_publish", url, cwd=home)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["uploaded"] is False
    missing = run_msk("publish", "no_such_repository", url, cwd=home)
    assert missing.returncode != 0 and "no_such_repository" in missing.stderr


def test_export_for_gpu_hosts_writes_gpu_configs(home: Path) -> None:
    res = run_msk("export", "--tiny", "--target", "gpu", "--repository", "gpu", cwd=home)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout) == {"repository": "gpu", "version": 1}
    assert "KIND_GPU" in (home / "gpu" / "densenet169_a" / "config.pbtxt").read_text()


def test_train_mura_imagenet_offline_fails_at_once_with_the_way_out(home: Path,
                                                                    tmp_path: Path) -> None:
    res = run_msk("train", "mura", "--data", "data", "--recipe", "mura_densenet169_a",
                  "--weights", "imagenet", "--out", "runs/imagenet", cwd=home, timeout=120,
                  env={"TORCH_HOME": str(tmp_path / "torch"), "MSK_OFFLINE": "1"})
    assert res.returncode == 2
    assert "ImageNet weights for densenet169 are not cached" in res.stderr
    assert "densenet169-b2777c0a.pth" in res.stderr and "--weights PATH" in res.stderr
    assert not (home / "runs" / "imagenet" / "densenet169_a").exists()


def test_train_and_evaluate_wrist(home: Path) -> None:
    train = run_msk("train", "wrist", "--synthetic", "40", "--targets", "joints", "--recipe",
                    "ci", "--epochs", "1", "--out", "runs/wrist", cwd=home)
    assert train.returncode == 0, train.stderr[-3000:]
    (result,) = _json_lines(train.stdout)
    assert result["target"] == "joints" and Path(home / result["weights"]).is_file() or \
        Path(result["weights"]).is_file()
    evaluate = run_msk("evaluate", "wrist", "--weights", result["weights"], "--data",
                       result["data"], "--split", "test", "--out", "runs/wrist/eval", cwd=home)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert list((home / "runs" / "wrist" / "eval").glob("*")), "no evaluation report written"


def test_demo_prints_one_result_per_sample(home: Path, exported) -> None:
    res = run_msk("demo", cwd=home)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _json_lines(res.stdout)
    samples = sorted(p.name for p in (home / "samples").iterdir())
    assert len(rows) == len(samples) >= 1
    for row in rows:
        assert row.get("error") is None and 0.0 <= row["probability"] <= 1.0
        assert row["weights"] == "untrained-demo" and row["notice"] == RESEARCH_USE_NOTICE
