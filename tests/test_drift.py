"""Drift on the dashboards (issue 21, item 5).

* The drift rules (deploy/prometheus/drift.yml) under `promtool test rules`
  (tests/rules/drift_test.yml: a stable version, a drifted one, a drifted one with too little
  traffic to alert on).
* Every exported MURA version carries `mura_drift/<v>/` whose reference shares are the version's
  own reference set in the constants' buckets.
* A real Prometheus scraping a real `msk serve` (tiny repository) fed first new images like its
  reference set, then a shifted stream (noise and flat images): the histograms, the PSI and the
  refused rate Prometheus computes move as they should, the body part sent as a request
  parameter labels the series, and every query of the dashboard's drift panels returns data.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from export.configs import render_mura_configs
from export.consistency import repository_problems
from export.mura_drift import PARAMS_FILE, bucket_shares
from export.ood_stats import Reference
from msk.constants import (
    DRIFT_BUCKETS,
    IMAGE_TENSOR,
    MURA_BODY_PARTS,
    MURA_DRIFT_MODEL,
    MURA_ENSEMBLE_MODEL,
    MURA_MEAN_MODEL,
    OOD_REFERENCE_FILE,
    OOD_SCORE_TENSOR,
    PROBABILITY_TENSOR,
)
from tests.plugins.msk_serve import running_msk_serve
from tests.plugins.observability import promtool

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "msk-triton.json"
RULES_TEST = ROOT / "tests" / "rules" / "drift_test.yml"
RATE_INTERVAL = "5m"     # $__rate_interval: the whole test fits in it, so rates keep their data



def test_drift_rules_pass_promtool_unit_tests():
    checked = promtool("check", "rules", str(PROMETHEUS / "drift.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    result = promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert "drift.yml" in config["rule_files"]


def _version(repository: Path) -> str:
    return max((p.name for p in (repository / MURA_DRIFT_MODEL).iterdir() if p.name.isdigit()),
               key=int)


def test_every_version_carries_its_drift_reference(tiny_repository: Path):
    version = _version(tiny_repository)
    folder = tiny_repository / MURA_DRIFT_MODEL / version
    params = json.loads((folder / PARAMS_FILE).read_text())
    assert params["edges"] == {q: list(e) for q, e in DRIFT_BUCKETS.items()}
    for quantity, shares in params["reference_shares"].items():
        assert len(shares) == len(DRIFT_BUCKETS[quantity]) + 1
        assert sum(shares) == pytest.approx(1.0)
    stats = Reference.from_bytes(
        (tiny_repository / MURA_MEAN_MODEL / version / OOD_REFERENCE_FILE).read_bytes())
    assert params["reference_images"] == len(stats.scores)
    assert params["reference_shares"]["ood_score"] == pytest.approx(
        bucket_shares(stats.scores, DRIFT_BUCKETS["ood_score"]))
    manifest = json.loads((tiny_repository / "manifest.json").read_text())
    ood = manifest["versions"][f"{MURA_ENSEMBLE_MODEL}/{version}"]["ood"]
    assert params["ood_thresholds"] == ood["thresholds"]
    assert params["ood_default_threshold"] == ood["default_threshold"]
    assert (folder / "model.py").read_text() == (
        ROOT / "export" / "python_models" / "mura_drift.py").read_text()
    recorded = {r["path"] for r in manifest["artifacts"] if r["model"] == MURA_DRIFT_MODEL}
    assert {f"{MURA_DRIFT_MODEL}/{version}/{PARAMS_FILE}",
            f"{MURA_DRIFT_MODEL}/{version}/model.py"} <= recorded
    assert repository_problems(tiny_repository) == []
    for target in ("cpu", "gpu"):
        config = render_mura_configs(target)[MURA_DRIFT_MODEL]
        assert 'backend: "python"' in config and "KIND_CPU" in config, target
        assert f'model_name: "{MURA_DRIFT_MODEL}"' in render_mura_configs(target)[
            MURA_ENSEMBLE_MODEL]


def test_a_missing_drift_version_makes_the_repository_inconsistent(repository_copy: Path):
    shutil.rmtree(repository_copy / MURA_DRIFT_MODEL / _version(repository_copy))
    assert any("do not share one set of versions" in p
               for p in repository_problems(repository_copy))


def _drift_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every dashboard panel about drift (the drift row's panels)."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            if "msk_mura" in target["expr"] or "msk:mura" in target["expr"]:
                out.append((panel["title"], target["expr"]))
    return out


def _prometheus_config(tmp_path: Path, metrics_url: str) -> Path:
    """The shipped prometheus.yml, its Triton job pointed at `msk serve`'s metrics port, both
    rule files, a 1 s scrape and evaluation interval."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS / name) for name in config["rule_files"]]
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "triton")
    job["static_configs"] = [{"targets": [metrics_url.split("/")[2]]}]
    config["scrape_configs"] = [job]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _like_reference(seed: int = 77) -> list[tuple[np.ndarray, str | None]]:
    """New images drawn as the tiny repository's reference set was (`demo_reference`: synthetic
    radiographs of every body part and the demo's sample look), from another seed: in
    distribution, but not the images the statistics were fitted on (those score low)."""
    from export.ood_reference import DEMO_SAMPLE_RADIOGRAPHS, DEMO_SYNTHETIC_PER_CLASS
    from msk.samples import radiograph
    from training.mura_synthetic import render_image

    rng = np.random.default_rng(seed)
    out: list[tuple[np.ndarray, str | None]] = []
    for part in MURA_BODY_PARTS:
        for label in (0, 1):
            for _ in range(DEMO_SYNTHETIC_PER_CLASS):
                h, w = (int(v) for v in rng.integers(160, 320, size=2))
                out.append((render_image(part, bool(label), rng, height=h, width=w), part))
    for k in range(DEMO_SAMPLE_RADIOGRAPHS):
        pixels = radiograph(310 + 40 * k, 270 + 30 * (k % 4), seed + k)
        out.append(((pixels * 255).astype(np.uint8), None))
    return out


def _shifted_images(count: int) -> list[np.ndarray]:
    """Images nothing like a radiograph: uniform noise and flat grey (docs/ood.md)."""
    rng = np.random.default_rng(5)
    out = []
    for i in range(count):
        if i % 2:
            out.append(np.full((200 + i, 240), 40 + 4 * i, np.uint8))
        else:
            out.append(rng.integers(0, 256, (220, 180 + i), np.uint8))
    return out


def _score(url: str, images: list[tuple[np.ndarray, str | None]]) -> list[float]:
    """Send each image to the ensemble as a plain tritonclient user would, with the body part
    as a request parameter where known; return the OOD scores."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    scores = []
    try:
        for pixels, part in images:
            inp = grpcclient.InferInput(IMAGE_TENSOR, list(pixels.shape), "UINT8")
            inp.set_data_from_numpy(np.ascontiguousarray(pixels))
            result = client.infer(MURA_ENSEMBLE_MODEL, [inp],
                                  parameters={"body_part": part} if part else None)
            assert result.as_numpy(PROBABILITY_TENSOR) is not None
            scores.append(float(result.as_numpy(OOD_SCORE_TENSOR).reshape(-1)[0]))
    finally:
        client.close()
    return scores


def _by_quantity(result: list[dict]) -> dict[str, float]:
    return {r["metric"]["quantity"]: float(r["value"][1]) for r in result}


def _one(result: list[dict]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def test_prometheus_sees_a_shifted_stream_drift(tiny_repository: Path, start_prometheus,
                                                tmp_path: Path):
    import urllib.request

    reference = _like_reference()
    shifted = [(pixels, "wrist") for pixels in _shifted_images(len(reference))]
    version = _version(tiny_repository)
    with running_msk_serve("serve", "--repository", str(tiny_repository)) as serve:
        # Triton's custom metrics pass through msk serve's metrics port, from load on.
        with urllib.request.urlopen(serve.metrics_url, timeout=30) as reply:
            text = reply.read().decode()
        shares = [line for line in text.splitlines()
                  if line.startswith("msk_mura_drift_reference_share{")]
        assert shares and all(f'version="{version}"' in line for line in shares), text[-2000:]
        assert "msk_mura_probability_bucket{" in text
        prom = start_prometheus(_prometheus_config(tmp_path, serve.metrics_url))
        prom.wait_for('up{job="triton"} == 1')
        prom.wait_for("msk_mura_drift_reference_share")
        # msk serve's warm-up image went through the ensemble but is not counted.
        base = _one(prom.wait_for("sum(msk_mura_ood_score_count)"))
        assert base == 0

        # Phase 1: new images like the reference set.
        _score(serve.grpc_url, reference)
        n = len(reference)
        prom.wait_for(f"sum(msk_mura_ood_score_count) == {base + n}")
        prom.wait_for(f"sum(msk_mura_drift_observations_total) == {3 * (base + n)}")
        prom.wait_for(f'msk:mura_images:increase1h{{version="{version}"}} >= {n}')
        psi_before = _by_quantity(prom.wait_for(
            "msk:mura_drift_psi:1h", predicate=lambda r: len(r) == 3))
        refused_before = _one(prom.query("msk:mura_refused_ratio:1h"))
        parts = {r["metric"]["body_part"] for r in prom.query(
            "sum by (body_part) (msk_mura_ood_score_count) > 0")}
        assert parts == {*MURA_BODY_PARTS, "unknown"}   # synthetic: their part; samples: none
        print("phase 1 (like the reference): PSI", psi_before, "refused", refused_before)
        assert refused_before < 0.05                      # 99th-percentile thresholds
        assert psi_before["probability"] < 0.2 and psi_before["member_spread"] < 0.2

        # Phase 2: a shifted stream (noise, flat images) labelled wrist.
        shifted_scores = _score(serve.grpc_url, shifted)
        prom.wait_for(f"sum(msk_mura_ood_score_count) == {base + 2 * n}")
        prom.wait_for(f"sum(msk_mura_drift_observations_total) == {3 * (base + 2 * n)}")
        prom.wait_for(f'msk:mura_images:increase1h{{version="{version}"}} >= {2 * n}')
        refused_after = _one(prom.wait_for(
            "msk:mura_refused_ratio:1h", predicate=lambda r: r and float(r[0]["value"][1])
            > refused_before))
        psi_after = _by_quantity(prom.query("msk:mura_drift_psi:1h"))
        print("phase 2 (+ shifted):           PSI", psi_after, "refused", refused_after)
        threshold = _one(prom.query(
            f'max(msk_mura_ood_threshold{{version="{version}",body_part="wrist"}})'))
        above = sum(score > threshold for score in shifted_scores)
        assert above >= n // 2, (shifted_scores, threshold)
        assert refused_after > 0.05 and refused_after > refused_before
        assert psi_after["ood_score"] > 0.2 and psi_after["ood_score"] > psi_before["ood_score"]
        wrist_ood = _one(prom.query(
            'sum(msk_mura_out_of_distribution_total{body_part="wrist"})'))
        assert wrist_ood >= above
        # The wrist histogram holds phase 1's wrist images and the whole shifted stream, and
        # the shifted images sit above the buckets the reference set fills.
        wrists = n + sum(part == "wrist" for _, part in reference)
        assert _one(prom.query(
            'sum(msk_mura_ood_score_bucket{le="+Inf",body_part="wrist"})')) == wrists
        top = max(DRIFT_BUCKETS["ood_score"])
        assert _one(prom.query(
            f'sum(msk_mura_ood_score_bucket{{le="+Inf",body_part="wrist"}}) - '
            f'sum(msk_mura_ood_score_bucket{{le="{top:g}",body_part="wrist"}})')) == sum(
                score > top for score in shifted_scores)

        missing = [f"{title}: {expr}" for title, expr in _drift_queries()
                   if not prom.query(expr.replace("$__rate_interval", RATE_INTERVAL))]
        assert len(_drift_queries()) >= 8
        assert not missing, "dashboard drift queries without data:\n" + "\n".join(missing)


def _counts_by_part(metrics_url: str) -> dict[str, float]:
    """`msk_mura_ood_score_count` per body part, as msk serve's metrics port shows it."""
    import urllib.request

    with urllib.request.urlopen(metrics_url, timeout=30) as reply:
        text = reply.read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("msk_mura_ood_score_count{"):
            part = line.split('body_part="', 1)[1].split('"', 1)[0]
            counts[part] = counts.get(part, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def test_the_clients_label_the_body_part_and_the_warm_up_is_not_counted(
        tiny_repository: Path, tmp_path: Path):
    """The project's own clients send the body part (MuraClient in Python, `msk score` from a
    CSV manifest); msk serve's warm-up image is not a served image; nobody else may mark a
    request as the warm-up."""
    import os
    import sys

    import tritonclient.grpc as grpcclient
    from PIL import Image
    from tritonclient.utils import InferenceServerException

    from clients.mura import MuraClient
    from msk.constants import WARMUP_PARAMETER
    from msk.samples import radiograph

    pixels = (radiograph(300, 240, 3) * 255).astype(np.uint8)
    image = tmp_path / "a.png"
    Image.fromarray(pixels).save(image)
    manifest = tmp_path / "images.csv"
    manifest.write_text(f"path,body_part\n{image},shoulder\n")
    with running_msk_serve("serve", "--repository", str(tiny_repository)) as serve:
        assert sum(_counts_by_part(serve.metrics_url).values()) == 0   # the warm-up ran
        with MuraClient(serve.grpc_url) as client:
            result = client.score_one(pixels, body_part="elbow", heatmap=False)
        assert result.error is None, result.error
        score = subprocess.run(
            [str(Path(sys.executable).parent / "msk"), "score", "--url", serve.grpc_url,
             "--no-progress", str(manifest)],
            capture_output=True, text=True, timeout=300, cwd=ROOT, env=os.environ.copy())
        assert score.returncode == 0, score.stderr[-2000:]
        row = json.loads(score.stdout.splitlines()[0])
        assert row.get("error") is None and row["body_part"] == "shoulder", row

        plain = grpcclient.InferenceServerClient(serve.grpc_url)
        try:
            inp = grpcclient.InferInput(IMAGE_TENSOR, list(pixels.shape), "UINT8")
            inp.set_data_from_numpy(pixels)
            with pytest.raises(InferenceServerException, match=WARMUP_PARAMETER):
                plain.infer(MURA_ENSEMBLE_MODEL, [inp], parameters={WARMUP_PARAMETER: True})
        finally:
            plain.close()
        counts = _counts_by_part(serve.metrics_url)
        assert counts.get("elbow") == 1 and counts.get("shoulder") == 1, counts
        assert sum(counts.values()) == 2, counts
