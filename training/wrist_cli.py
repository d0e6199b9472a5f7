"""Options and handlers of `msk train wrist` and `msk evaluate wrist` (import-light: the heavy
imports happen inside the handlers)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from msk.constants import (
    WRIST_CLASSES,
    WRIST_CONF_THRESHOLD,
    WRIST_CROP_TOP_DENOMINATOR,
    WRIST_CROP_TOP_NUMERATOR,
    WRIST_DETECTED_IOU,
    WRIST_HEIGHT,
    WRIST_WIDTH,
)
from training.recipe_schema import RecipeError

TARGET_HELP = ("comma-separated: joints, bones and/or single structures "
               f"({', '.join(WRIST_CLASSES)})")


def _datasets(args: argparse.Namespace, targets: list[str]) -> dict[str, Path]:
    from training.wrist_labels import build_datasets, build_synthetic_datasets, import_folder

    out = Path(args.out)
    if args.synthetic:
        return build_synthetic_datasets(out / "data", args.synthetic, args.seed, targets)
    if not args.labels:
        raise SystemExit("msk train wrist: give --labels DIR (images + YOLO/VOC labels) or "
                         "--synthetic N")
    items, problems = import_folder(Path(args.labels), Path(args.label_dir or args.labels),
                                    patient_regex=args.patient_regex,
                                    patients_csv=Path(args.patients_csv) if args.patients_csv
                                    else None)
    for p in problems:
        print(f"msk train wrist: {p}", file=sys.stderr)
    if not items:
        raise SystemExit("msk train wrist: no labelled images found")
    return build_datasets(items, out / "data", targets, seed=args.seed)


def _train(args: argparse.Namespace) -> int:
    from training.wrist_train import load_recipe, train_detector

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    try:
        recipe = load_recipe(args.recipe)
    except RecipeError as exc:
        print(f"msk train wrist: {exc}", file=sys.stderr)
        return 2
    overrides = {k: v for k, v in (("epochs", args.epochs), ("imgsz", args.imgsz),
                                   ("batch", args.batch), ("device", args.device))
                 if v is not None}
    data = _datasets(args, targets)
    for target in targets:
        result = train_detector(data[target], Path(args.out) / "runs", recipe, target=target,
                                weights=Path(args.weights) if args.weights else None,
                                overrides=overrides)
        print(json.dumps({**result.to_json(), "data": str(data[target])}), flush=True)
    return 0


def register_train(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "wrist", help="train wrist structure detectors (Ultralytics YOLO, offline)",
        description="Import labels (YOLO txt or Pascal VOC XML), preprocess like the study (crop "
        f"the top {WRIST_CROP_TOP_NUMERATOR}/{WRIST_CROP_TOP_DENOMINATOR}, letterbox "
        f"{WRIST_HEIGHT}x{WRIST_WIDTH}, CLAHE), split by patient and train one detector per "
        "target. "
        "Prints one JSON line per trained detector.")
    p.add_argument("--labels", help="folder with the radiographs (and their label files)")
    p.add_argument("--label-dir", help="folder with the label files if not next to the images")
    p.add_argument("--synthetic", type=int, default=0, metavar="N",
                   help="train on N generated synthetic wrist images instead of --labels")
    p.add_argument("--targets", default="joints,bones", help=TARGET_HELP)
    p.add_argument("--recipe", default="study",
                   help="recipe name (study, cpu_proof, ci) or a YAML path (default study)")
    p.add_argument("--out", default="runs/wrist", help="output folder (default runs/wrist)")
    p.add_argument("--weights", help="local .pt to start from (nothing is downloaded)")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--imgsz", type=int, help="override the recipe's image size (long side)")
    p.add_argument("--batch", type=int, help="override the recipe's batch size")
    p.add_argument("--device", help="override the recipe's device (cpu, 0, ...)")
    p.add_argument("--seed", type=int, default=0, help="split and synthetic-data seed")
    p.add_argument("--patients-csv", help="CSV with columns image,patient for the patient split")
    p.add_argument("--patient-regex", default=r"^(.+?)_",
                   help="regex whose first group is the patient id in a file name "
                   "(default: text before the first '_')")
    p.set_defaults(handler=_train)


def _evaluate(args: argparse.Namespace) -> int:
    from training.wrist_evaluate import evaluate_detector

    report = evaluate_detector(Path(args.weights), Path(args.data), Path(args.out),
                               split=args.split, imgsz=args.imgsz, conf=args.conf)
    print(json.dumps({"map50": report["map50"], "map50_95": report["map50_95"],
                      "per_class": report["per_class"], "report": str(Path(args.out) /
                                                                       "report.md")}))
    return 0


def register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "wrist", help="evaluate a wrist detector (P, R, F1, AP50, AP50-95, "
        f"IoU>={WRIST_DETECTED_IOU:g} rate)",
        description="Run a trained detector on a dataset split and write metrics.json, "
        "report.md, the confusion matrix and PR/F1 curves.")
    p.add_argument("--weights", required=True, help="trained detector (.pt)")
    p.add_argument("--data", required=True,
                   help="Ultralytics data.yaml written by `msk train wrist` (under OUT/data/)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"),
                   help="split to evaluate (default test)")
    p.add_argument("--out", default="runs/wrist/eval", help="report folder")
    p.add_argument("--imgsz", type=int, help="image size (default: the training size)")
    p.add_argument("--conf", type=float, default=WRIST_CONF_THRESHOLD,
                   help=f"score threshold for the IoU>={WRIST_DETECTED_IOU:g} detection rate "
                   f"(default {WRIST_CONF_THRESHOLD:g}, the served threshold)")
    p.set_defaults(handler=_evaluate)
