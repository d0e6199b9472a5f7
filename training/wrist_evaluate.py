"""Evaluate a wrist detector the way the study reports it.

Per class: precision, recall, F1, AP50, AP50-95 (Ultralytics' validator, rect batches at the
training size), mAP50 and mAP50-95 over classes, and the study's criterion - the share of labelled
structures that a prediction of the same class (score >= conf) overlaps with IoU >= 0.65
(`WRIST_DETECTED_IOU`). Writes `metrics.json`, `report.md`, the confusion matrix and the PR/F1
curves (PNG, from Ultralytics' plots) into the output folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import yaml

from msk import RESEARCH_USE_NOTICE
from msk.constants import WRIST_DETECTED_IOU
from msk.imaging import load_grayscale
from msk.wrist_geometry import WRIST_CONF_THRESHOLD, export_size, iou_matrix

PLOTS = ("confusion_matrix.png", "confusion_matrix_normalized.png", "BoxPR_curve.png",
         "BoxF1_curve.png", "BoxP_curve.png", "BoxR_curve.png")


def _split_files(data_yaml: Path, split: str) -> list[Path]:
    """The images of a split, as Ultralytics' validator lists them (its own format list, so the
    criterion and the validator always see the same files)."""
    from ultralytics.data.utils import IMG_FORMATS

    data = yaml.safe_load(Path(data_yaml).read_text())
    folder = Path(data["path"]) / data[split]
    return sorted(p for p in folder.iterdir() if p.suffix.lower().lstrip(".") in IMG_FORMATS)


def _labels_for(image: Path, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    txt = Path(str(image).replace("/images/", "/labels/")).with_suffix(".txt")
    rows = [r.split() for r in txt.read_text().splitlines() if r.strip()] if txt.exists() else []
    if not rows:
        return np.zeros((0, 4)), np.zeros(0, np.int64)
    a = np.array(rows, np.float64)
    cx, cy, w, h = a[:, 1] * width, a[:, 2] * height, a[:, 3] * width, a[:, 4] * height
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1), a[:, 0].astype(np.int64)


def detection_rate(model, files: list[Path], names: dict[int, str], imgsz: tuple[int, int],
                   conf: float = WRIST_CONF_THRESHOLD, iou: float = WRIST_DETECTED_IOU,
                   ) -> dict[str, dict[str, float]]:
    """The study's criterion per class: detected / labelled structures at IoU >= `iou`.
    Images are read by the one radiograph reader (a file it cannot read fails with its name)."""
    found = {k: 0 for k in names}
    total = {k: 0 for k in names}
    for path in files:
        img = load_grayscale(path)
        gt, gt_cls = _labels_for(path, img.shape[1], img.shape[0])
        res = model.predict(np.repeat(img[..., None], 3, axis=2), imgsz=imgsz, conf=conf,
                            verbose=False, device="cpu")[0]
        pb = res.boxes.xyxy.cpu().numpy()
        pc = res.boxes.cls.cpu().numpy().astype(np.int64)
        for box, k in zip(gt, gt_cls, strict=True):
            total[int(k)] += 1
            same = pb[pc == k]
            if len(same) and iou_matrix(box[None], same).max() >= iou:
                found[int(k)] += 1
    return {names[k]: {"detected": found[k], "labelled": total[k],
                       "rate": found[k] / total[k] if total[k] else float("nan")} for k in names}


def evaluate_detector(weights: Path, data_yaml: Path, out_dir: Path, *, split: str = "val",
                      imgsz: int | None = None, conf: float = WRIST_CONF_THRESHOLD) -> dict:
    from training.wrist_train import trained_imgsz, ultralytics_offline

    ultralytics_offline()
    from ultralytics import YOLO

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    model = YOLO(str(weights))
    if imgsz is None:
        imgsz = trained_imgsz(model)
    names = dict(model.names)
    val = model.val(data=str(Path(data_yaml).resolve()), split=split, imgsz=imgsz, batch=8,
                    rect=True, plots=True, device="cpu", project=str(out_dir), name="ultralytics",
                    exist_ok=True, verbose=False, workers=0)
    box = val.box
    per_class = {}
    for i, k in enumerate(box.ap_class_index):
        p, r = float(box.p[i]), float(box.r[i])
        per_class[names[int(k)]] = {
            "precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "ap50": float(box.ap50[i]), "ap50_95": float(box.ap[i]),
        }
    rates = detection_rate(model, _split_files(data_yaml, split), names, export_size(imgsz), conf)
    for name, rate in rates.items():
        per_class.setdefault(name, {})[f"detected_iou{WRIST_DETECTED_IOU:g}"] = rate["rate"]
        per_class[name]["labelled"] = rate["labelled"]
    save_dir = Path(val.save_dir)
    plots = []
    for name in PLOTS:
        if (save_dir / name).exists():
            shutil.copy2(save_dir / name, out_dir / name)
            plots.append(name)
    report = {
        "weights": str(weights), "data": str(data_yaml), "split": split, "imgsz": imgsz,
        "map50": float(box.map50), "map50_95": float(box.map), "per_class": per_class,
        "criterion_iou": WRIST_DETECTED_IOU, "conf": conf, "plots": plots,
    }
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=1))
    (out_dir / "report.md").write_text(markdown_report(report))
    return report


def markdown_report(r: dict) -> str:
    iou = r["criterion_iou"]
    lines = [f"# Wrist detector evaluation ({r['split']} split)", "",
             f"Weights `{r['weights']}`, data `{r['data']}`, imgsz {r['imgsz']}.", "",
             f"**mAP50 {r['map50']:.3f}**, mAP50-95 {r['map50_95']:.3f}.", "",
             f"| class | P | R | F1 | AP50 | AP50-95 | detected (IoU >= {iou:g}) | n |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in r["per_class"].items():
        def f(key: str, m=m) -> str:
            v = m.get(key)
            return "-" if v is None or v != v else f"{v:.3f}"
        lines.append(f"| {name} | {f('precision')} | {f('recall')} | {f('f1')} | {f('ap50')} | "
                     f"{f('ap50_95')} | {f(f'detected_iou{iou:g}')} | {m.get('labelled', '-')} |")
    lines += ["", *[f"![{p}]({p})" for p in r["plots"]], "", f"_{RESEARCH_USE_NOTICE}_", ""]
    return "\n".join(lines)


class InProcessWristPipeline:
    """The Ultralytics predictor, in this process, on the reference (OpenCV) preprocessing: what
    the served `wrist_detect` ensemble must reproduce (tests) and the benchmark's baseline.

    `detect(image)` -> list of (class name, score, x1, y1, x2, y2) in original pixels, joints
    detector first, each sorted by falling score (the ensemble's order)."""

    def __init__(self, weights: dict[str, Path], conf: float = WRIST_CONF_THRESHOLD,
                 iou: float | None = None) -> None:
        from training.wrist_train import trained_imgsz, ultralytics_offline

        ultralytics_offline()
        from ultralytics import YOLO

        from msk.wrist_geometry import WRIST_NMS_IOU

        self.conf, self.iou = conf, WRIST_NMS_IOU if iou is None else iou
        self.models = {}
        for key in ("joints", "bones"):
            model = YOLO(str(weights[key]))
            self.models[key] = (model, export_size(trained_imgsz(model)))

    def detect(self, image: np.ndarray) -> list[tuple[str, float, float, float, float, float]]:
        from training.wrist_preprocess import preprocess_wrist_uint8

        canvas, geo = preprocess_wrist_uint8(image)
        bgr = np.repeat(canvas[..., None], 3, axis=2)
        out = []
        for model, size in self.models.values():
            res = model.predict(bgr, imgsz=size, conf=self.conf, iou=self.iou, verbose=False,
                                device="cpu")[0]
            boxes = geo.inverse(res.boxes.xyxy.cpu().numpy())
            for b, s, k in zip(boxes, res.boxes.conf.cpu().numpy(),
                               res.boxes.cls.cpu().numpy().astype(int), strict=True):
                out.append((model.names[int(k)], float(s), *(float(v) for v in b)))
        return out
