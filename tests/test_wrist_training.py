"""Short Ultralytics training on synthetic wrists: the loss falls, ONNX matches PyTorch, the
evaluation report is complete, the CLI parses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from msk.constants import WRIST_BONE_CLASSES, WRIST_JOINT_CLASSES
from msk.wrist_geometry import export_size

ROOT = Path(__file__).resolve().parent.parent


def test_training_loss_falls(wrist_ci_models) -> None:
    """Ultralytics' task-aligned loss first rises (box terms grow from ~0 as predictions begin to
    overlap objects), then falls: the peak must be early and the end well below it."""
    for target in ("joints", "bones"):
        losses = wrist_ci_models.losses[target]
        assert len(losses) >= 10, target
        peak = int(np.argmax(losses))
        assert peak < len(losses) // 2, f"{target}: {losses}"
        assert losses[-1] < 0.7 * losses[peak], f"{target}: {losses}"
        assert np.mean(losses[-3:]) < np.mean(losses[peak + 1:peak + 4]), f"{target}: {losses}"
        assert wrist_ci_models.weights[target].exists()


def test_exported_onnx_matches_pytorch(wrist_ci_models, tmp_path: Path) -> None:
    import onnxruntime as ort
    import torch

    from export.wrist_export import checkpoint_info, export_detector
    from training.wrist_preprocess import detector_input, preprocess_wrist_uint8
    from training.wrist_synthetic import make_wrist
    from training.wrist_train import ultralytics_offline

    ultralytics_offline()
    from ultralytics import YOLO

    weights = wrist_ci_models.weights["joints"]
    names, imgsz = checkpoint_info(weights)
    assert names == WRIST_JOINT_CLASSES
    det = export_detector(weights, tmp_path / "joints.onnx")
    assert (det.in_h, det.in_w) == export_size(imgsz)
    from msk.wrist_geometry import detector_letterbox

    canvas, _ = preprocess_wrist_uint8(make_wrist(11, 0).image)
    x = detector_input(canvas, detector_letterbox(det.in_h, det.in_w))[None]
    x = np.concatenate([x, x[:, :, ::-1].copy()])           # batch of 2: dynamic batch axis
    sess = ort.InferenceSession(str(det.onnx_path), providers=["CPUExecutionProvider"])
    onnx_out = sess.run(None, {"images": x})[0]
    model = YOLO(str(weights)).model.float().eval()
    with torch.no_grad():
        torch_out = model(torch.from_numpy(x))
    torch_out = (torch_out[0] if isinstance(torch_out, list | tuple) else torch_out).numpy()
    assert onnx_out.shape == torch_out.shape == (2, 4 + 3, det.anchors)
    assert np.abs(onnx_out - torch_out).max() <= 1e-3 * max(1.0, np.abs(torch_out).max())


def test_evaluation_report(wrist_ci_models, tmp_path: Path) -> None:
    from training.wrist_evaluate import evaluate_detector

    report = evaluate_detector(wrist_ci_models.weights["bones"], wrist_ci_models.data["bones"],
                               tmp_path / "eval", split="val")
    assert set(report["per_class"]) == set(WRIST_BONE_CLASSES)
    for m in report["per_class"].values():
        assert {"precision", "recall", "f1", "ap50", "ap50_95", "detected_iou0.65"} <= set(m)
        assert 0.0 <= m["ap50"] <= 1.0 and m["labelled"] > 0
    assert 0.0 <= report["map50"] <= 1.0
    assert "confusion_matrix.png" in report["plots"] and "BoxPR_curve.png" in report["plots"]
    assert "BoxF1_curve.png" in report["plots"]
    for name in report["plots"]:
        assert (tmp_path / "eval" / name).read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["map50"] == report["map50"]
    assert "mAP50" in (tmp_path / "eval" / "report.md").read_text()


def test_cli_and_clients_are_import_light() -> None:
    """CLI registration and the clients never pull in torch, Ultralytics or OpenCV."""
    code = ("import sys, argparse; import training.wrist_cli as c;"
            "import clients.wrist, clients.overlay, msk.commands.detect, msk.wrist_geometry;"
            "p, q = argparse.ArgumentParser(), argparse.ArgumentParser();"
            "s = p.add_subparsers(); c.register_train(s); c.register_evaluate(q.add_subparsers());"
            "print(sorted(m for m in ('torch', 'ultralytics', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
    for family in ("train", "evaluate"):
        res = subprocess.run([sys.executable, "-m", "msk.cli", family, "wrist", "--help"],
                             cwd=ROOT, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        assert "--weights" in res.stdout
