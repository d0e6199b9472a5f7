"""Learnability proof for the wrist joints detector on this CPU (`make proof-wrist`).

Synthetic wrist radiographs (training/wrist_synthetic.py) go through the real label path (raw PNG
8/16-bit + YOLO/VOC labels -> import -> study preprocessing -> patient split), a yolo11n joints
detector is trained from scratch with the `cpu_proof` recipe (imgsz 224 -> detector input
224 x 128 instead of the study's 1408 x 768, so that it fits the time budget; Ultralytics' `time`
cap bounds training), and mAP50 is measured on the held-out patients of the test split, which
training never sees (not even for checkpoint selection). Target: mAP50 >= 0.60 within 20 minutes.

Last stdout line: `proof-wrist: map50=<joints mAP50 on the test split>`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="synthetic images (all splits)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "proof_wrist")
    parser.add_argument("--hours", type=float, default=None,
                        help="training time cap in hours (default: the recipe's)")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")

    from training.wrist_train import load_recipe, train_detector, ultralytics_offline

    ultralytics_offline()
    import torch

    torch.set_num_threads(2)
    from training.wrist_evaluate import evaluate_detector
    from training.wrist_labels import build_synthetic_datasets

    start = time.perf_counter()
    data = build_synthetic_datasets(args.out / "data", args.images, args.seed,
                                    targets=("joints",), fractions=(0.75, 0.05, 0.2))
    t_data = time.perf_counter() - start
    print(f"proof-wrist: dataset ready in {t_data:.0f} s", file=sys.stderr)

    recipe = load_recipe("cpu_proof")
    overrides: dict = {"val": False}
    if args.hours is not None:
        overrides["time"] = args.hours
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    recipe = dataclasses.replace(recipe, **overrides)
    result = train_detector(data["joints"], args.out / "runs", recipe, target="joints")
    t_train = time.perf_counter() - start - t_data
    print(f"proof-wrist: trained {len(result.losses)} epochs in {t_train:.0f} s; "
          f"loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}", file=sys.stderr)

    report = evaluate_detector(result.last, data["joints"], args.out / "eval", split="test")
    total = time.perf_counter() - start
    summary = {"map50": report["map50"], "map50_95": report["map50_95"],
               "per_class": report["per_class"], "epochs": len(result.losses),
               "losses": result.losses, "seconds": {"data": t_data, "train": t_train,
                                                    "total": total},
               "images": args.images, "recipe": recipe.name, "imgsz": recipe.imgsz}
    (args.out / "result.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "losses"}))
    print(f"proof-wrist: map50={report['map50']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
