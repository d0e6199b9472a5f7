"""Learnable proof for the MURA pipeline on CPU: it must *learn*, not only run.

Generates a synthetic MURA-v1.1 set (abnormal = a fracture-like discontinuity with a radiolucent
line and a displaced fragment), trains the four real ensemble members (DenseNet-169 and
ResNet-101, variants A and B) with their recipes at a small image size, fits the ensemble's
operating points on the validation split and evaluates everything on a held-out, patient-level
test split with `training.mura_evaluate` (the same report `msk evaluate mura` writes).

Baseline measured in the same run: the same architectures with their untrained (seeded) weights
on the same test split; the ratio trained/untrained AUROC is printed next to each result.
Passes when every member and the ensemble reach study-level AUROC >= --min-auroc (0.90).
Last stdout line: `proof-mura: auroc=<ensemble study-level AUROC>`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from msk.constants import MURA_ARCHITECTURES, MURA_MEMBERS  # noqa: E402

PROOF_LR = 1e-3
"""Random init and a few hundred steps: 10x the study's ImageNet fine-tuning rate (see docs)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "proof-mura",
                   help="work folder (data, checkpoints, report); recreated each run")
    p.add_argument("--image-size", type=int, default=96, help="backbone input size (px)")
    p.add_argument("--epochs-densenet", type=int, default=2,
                   help="max epochs of the DenseNet-169 members (they learn the task in 1-2)")
    p.add_argument("--epochs-resnet", type=int, default=5,
                   help="max epochs of the ResNet-101 members (slower to start from random "
                   "init, cheaper per epoch)")
    p.add_argument("--lr", type=float, default=PROOF_LR, help="Adam learning rate")
    p.add_argument("--train-patients", type=int, default=100,
                   help="synthetic patients in MURA's train split (a quarter becomes test)")
    p.add_argument("--valid-patients", type=int, default=30,
                   help="synthetic patients in MURA's valid split")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0, help="data, split and training seed")
    p.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples")
    p.add_argument("--min-auroc", type=float, default=0.90,
                   help="study-level AUROC every member and the ensemble must reach")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    import numpy as np
    import torch

    from training.mura_data import MuraImageDataset, load_splits
    from training.mura_evaluate import (
        ensemble_predictions,
        evaluate,
        fit_ensemble_points,
        member_predictions,
        write_calibration,
    )
    from training.mura_metrics import auroc, labelled_study_means
    from training.mura_models import build_backbone
    from training.mura_synthetic import SyntheticSpec, generate
    from training.mura_train import load_recipe, predict_logits, train_member

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # see training.mura_train._device: 20-30x on fresh networks
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    if args.out.exists():
        shutil.rmtree(args.out)
    data_dir, ckpt_dir = args.out / "data", args.out / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    generate(data_dir, SyntheticSpec(train_patients=args.train_patients,
                                     valid_patients=args.valid_patients, seed=args.seed))
    splits = load_splits(data_dir, test_fraction=0.25, split_seed=args.seed)
    sizes = {k: len(v) for k, v in splits.items()}
    print(json.dumps({"data": sizes, "image_size": args.image_size,
                      "generate_s": round(time.perf_counter() - started, 1)}), flush=True)
    test = splits["test"]
    test_set = MuraImageDataset(test, args.image_size, cache=True)
    y_test = [r.label for r in test]
    studies = [r.study for r in test]

    def study_auroc(probabilities) -> float:
        _, labels, probs = labelled_study_means(studies, y_test, probabilities)
        return auroc(labels, probs)

    baseline: dict[str, float] = {}
    for arch in sorted(set(MURA_ARCHITECTURES.values())):
        logits = predict_logits(build_backbone(arch, seed=args.seed), test_set, 16)
        baseline[arch] = study_auroc(1 / (1 + np.exp(-logits)))

    timings: dict[str, float] = {}
    for member in MURA_MEMBERS:
        recipe = load_recipe(f"mura_{member}")
        epochs = (args.epochs_densenet if recipe.architecture == "densenet169"
                  else args.epochs_resnet)
        recipe = dataclasses.replace(recipe, image_size=args.image_size, epochs=epochs,
                                     lr=args.lr, num_workers=0, seed=args.seed)
        t0 = time.perf_counter()
        result = train_member(recipe, splits["train"], splits["valid"], args.out / member,
                              device="cpu", resume=False, cache=True, progress=False)
        timings[member] = round(time.perf_counter() - t0, 1)
        shutil.copy2(result.checkpoint, ckpt_dir / f"{member}.pt")

    members = [member_predictions(ckpt_dir / f"{m}.pt", splits["valid"], cache=True)
               for m in MURA_MEMBERS]
    points = fit_ensemble_points(ensemble_predictions(members), splits["valid"])
    write_calibration(ckpt_dir, points, "youden", splits["valid"])
    results = evaluate({m: ckpt_dir / f"{m}.pt" for m in MURA_MEMBERS}, test,
                       args.out / "report", split_name="synthetic held-out test",
                       ensemble_points=points, n_bootstrap=args.bootstrap, cache=True)

    ok = True
    for name in (*MURA_MEMBERS, "ensemble"):
        study = results[name]["study"]["overall"]["auroc"]
        image = results[name]["image"]["overall"]["auroc"]["value"]
        base = (float(np.mean(list(baseline.values()))) if name == "ensemble"
                else baseline[MURA_ARCHITECTURES[name]])
        ok &= study["value"] >= args.min_auroc
        print(json.dumps({
            "model": name, "study_auroc": round(study["value"], 4),
            "study_auroc_95ci": [round(study["low"], 4), round(study["high"], 4)],
            "image_auroc": round(image, 4), "untrained_study_auroc": round(base, 4),
            "ratio_vs_untrained": round(study["value"] / base, 2) if base else None,
            "train_s": timings.get(name)}), flush=True)
    total = time.perf_counter() - started
    print(json.dumps({"passed": bool(ok), "min_auroc": args.min_auroc,
                      "total_s": round(total, 1), "threads": args.threads,
                      "load_avg_start": round(load_start, 2),
                      "load_avg_end": round(os.getloadavg()[0], 2),
                      "report": str(args.out / "report" / "report.md")}), flush=True)
    print(f"proof-mura: auroc={results['ensemble']['study']['overall']['auroc']['value']:.4f}",
          flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
