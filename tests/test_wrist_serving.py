"""`wrist_detect` on the real tritonserver vs the Ultralytics predictor in-process; client, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from msk.constants import WRIST_CLASSES
from msk.wrist_geometry import iou_matrix
from tests.plugins.wrist import WRIST_CI_CONF
from training.wrist_synthetic import make_wrist

ROOT = Path(__file__).resolve().parent.parent
BORDERLINE = 0.03   # boxes this close to the score threshold may fall on either side of it


@pytest.fixture(scope="module")
def reference(wrist_ci_models):
    from training.wrist_evaluate import InProcessWristPipeline

    return InProcessWristPipeline(wrist_ci_models.weights, conf=WRIST_CI_CONF)


@pytest.fixture(scope="module")
def client(wrist_triton):
    from clients.wrist import WristClient

    with WristClient(wrist_triton.grpc_url) as c:
        yield c


def _match(served, expected) -> int:
    """Pair served and in-process boxes (same class, best IoU); every confident box must pair
    within 1 px. Returns the number of pairs."""
    pairs = 0
    used: set[int] = set()
    for name, score, *box in expected:
        cands = [i for i, d in enumerate(served) if d.class_name == name and i not in used]
        if cands:
            ious = iou_matrix(np.array([box]), np.array([[served[i].x1, served[i].y1,
                                                          served[i].x2, served[i].y2]
                                                         for i in cands]))[0]
            best = cands[int(ious.argmax())]
            d = served[best]
            if np.abs(np.array([d.x1, d.y1, d.x2, d.y2]) - np.array(box)).max() <= 1.0:
                assert abs(d.score - score) < 0.02, (name, d.score, score)
                used.add(best)
                pairs += 1
                continue
        assert score < WRIST_CI_CONF + BORDERLINE, f"unmatched {name} {score:.3f} {box}"
    for i, d in enumerate(served):
        if i not in used:
            assert d.score < WRIST_CI_CONF + BORDERLINE, f"extra served {d}"
    return pairs


def test_ensemble_matches_ultralytics_in_process(client, reference) -> None:
    images = [make_wrist(2000 + i, 0, sixteen_bit=bool(i % 2)).image for i in range(4)]
    images.append(make_wrist(2010, 0, size=(800, 1500)).image)      # width-limited letterbox
    pairs = 0
    for img in images:
        result = client.detect([img])[0]
        assert result.error is None, result.error
        assert all(d.class_name in WRIST_CLASSES for d in result.detections)
        pairs += _match(result.detections, reference.detect(img))
        h, w = img.shape
        for d in result.detections:
            assert 0 <= d.x1 <= d.x2 <= w and 0 <= d.y1 <= d.y2 <= h
    assert pairs >= 5, "the CI detectors should find structures on synthetic wrists"


def test_boxes_land_on_the_structures(client, wrist_image) -> None:
    """Served boxes are in ORIGINAL pixels: the confident ones overlap the true structure."""
    result = client.detect([wrist_image.image])[0]
    best: dict[str, float] = {}
    for d in result.detections:
        truth = np.array([wrist_image.boxes[d.class_name]])
        iou = iou_matrix(truth, np.array([[d.x1, d.y1, d.x2, d.y2]]))[0, 0]
        best[d.class_name] = max(best.get(d.class_name, 0.0), iou)
    assert sum(v >= 0.3 for v in best.values()) >= 2, best


def test_bad_inputs_fail_alone_and_versions_are_reported(client, wrist_repository,
                                                         tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    good = make_wrist(2100, 0).image
    results = client.detect([broken, np.zeros((3, 3), np.uint8), good, tmp_path / "missing.png"])
    assert "broken.png" in results[0].error and "not a readable image" in results[0].error
    assert "too small" in results[1].error
    assert "missing.png" in results[3].error
    assert results[2].error is None
    records = json.loads((wrist_repository / "wrist_records.json").read_text())
    served = {r["model"]: str(r["version"]) for r in records}
    for model in ("wrist_joints", "wrist_bones", "wrist_preprocess", "wrist_postprocess"):
        assert results[2].versions[model] == served[model]
    sha = {r["model"]: r["sha256"] for r in records}
    assert results[2].artifacts["wrist_joints"] == sha["wrist_joints"]
    doc = results[2].to_json()
    assert set(doc) >= {"boxes", "versions", "error"}
    assert all(set(b) == {"class", "score", "x1", "y1", "x2", "y2"} for b in doc["boxes"])


def test_msk_detect_cli(wrist_triton, tmp_path: Path) -> None:
    images = tmp_path / "in"
    (images / "sub").mkdir(parents=True)
    cv2.imwrite(str(images / "a.png"), make_wrist(2200, 0, sixteen_bit=True).image)
    cv2.imwrite(str(images / "sub" / "b.png"), make_wrist(2201, 0).image)
    (images / "c.png").write_bytes(b"garbage")
    overlays = tmp_path / "overlays"
    res = subprocess.run(
        [sys.executable, "-m", "msk.cli", "detect", str(images), str(tmp_path / "none*.png"),
         "--url", wrist_triton.grpc_url, "--overlay-dir", str(overlays)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr        # some inputs failed
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    by_name = {Path(d["input"]).name: d for d in lines}
    assert set(by_name) == {"a.png", "b.png", "c.png", "none*.png"}
    assert by_name["c.png"]["error"] and by_name["none*.png"]["error"]
    for name in ("a.png", "b.png"):
        doc = by_name[name]
        assert doc["error"] is None and doc["boxes"]
        png = cv2.imread(doc["overlay"], cv2.IMREAD_COLOR)
        assert png.shape[:2] == (doc["height"], doc["width"])
        b = doc["boxes"][0]
        edge = png[int(b["y1"]) + 1:int(b["y2"]) - 1, int(b["x1"]) + 1]
        assert (np.ptp(edge, axis=1) > 40).mean() > 0.5      # coloured box edge drawn there
