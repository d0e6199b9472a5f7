"""`msk train mura` and `msk evaluate mura`: options and handlers.

Import-light on purpose (argparse, json, pathlib): `msk --help` builds every parser, so torch,
onnxruntime and matplotlib are imported only inside the handlers.
Machine output is one JSON line on stdout; progress bars and logs go to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from msk.constants import (
    MURA_BODY_PARTS,
    MURA_IMAGE_SIZE,
    MURA_MEMBERS,
    MURA_TRAIN_BATCH_SIZE,
    OOD_REFERENCE_CSV,
)
from training.recipe_schema import (
    DEFAULT_OPERATING_POINT,
    DEFAULT_TARGET_SENSITIVITY,
    OPERATING_POINT_METHODS,
    PREDICT_BATCH_SIZE,
    MuraRecipe,
    RecipeError,
)

DEFAULT_RECIPES = tuple(f"mura_{m}" for m in MURA_MEMBERS)


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=None,
                   help="folder holding the extracted MURA-v1.1/ (or MURA-v1.1/ itself)")
    p.add_argument("--extra-folder", type=Path, action="append", default=[],
                   help="extra labelled set laid out as <dir>/<fractured|not fractured|abnormal|"
                   "normal>/...; joins the training pool (repeatable)")
    p.add_argument("--extra-csv", type=Path, action="append", default=[],
                   help="extra labelled set as a CSV with path,label[,body_part,patient,study] "
                   "(paths relative to the CSV; repeatable)")
    p.add_argument("--body-parts", default="",
                   help=f"comma-separated subset of {','.join(MURA_BODY_PARTS)} (default: all)")
    p.add_argument("--test-fraction", type=float, default=0.1,
                   help="fraction of training patients held out as the test split (default 0.1)")
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed of the patient-level test split (default 0)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0 = torch's default)")


def register_train(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "mura", help="train MURA ensemble members (DenseNet-169 / ResNet-101, variants A/B)",
        description="Train one or more ensemble members with the study's recipe "
        f"({MURA_IMAGE_SIZE}x{MURA_IMAGE_SIZE}, batch {MURA_TRAIN_BATCH_SIZE}, Adam 1e-4, "
        "<=20 epochs, LR x0.1 on plateau, early stopping, class weights). "
        "Resumes from OUT/<member>/last.pt; writes OUT/<member>.pt (the checkpoint `msk export "
        "--checkpoints OUT` promotes) and, once all four exist, OUT/ensemble_calibration.json.",
    )
    _data_options(p)
    p.add_argument("--recipe", action="append", default=None,
                   help="recipe name in training/recipes/ or a YAML path (repeatable; default: "
                   "the four members)")
    p.add_argument("--out", type=Path, default=Path("runs/mura"),
                   help="output folder (default runs/mura)")
    p.add_argument("--weights", default="none",
                   help="ImageNet initialisation: 'imagenet' = torchvision's ImageNet weights "
                   "through torchvision's download and cache (online; offline it fails at once "
                   "unless cached), a local torchvision state-dict file, a folder with "
                   "densenet169.pth/resnet101.pth, or 'none' = random init (default)")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's max epochs")
    p.add_argument("--image-size", type=int, default=None,
                   help=f"override the recipe's image size ({MURA_IMAGE_SIZE} px in the study "
                   "recipes; smaller for CPU experiments)")
    p.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch")
    p.add_argument("--lr", type=float, default=None, help="override the recipe's learning rate")
    p.add_argument("--workers", type=int, default=None,
                   help="data-loader processes (override the recipe's num_workers)")
    p.add_argument("--cache", action="store_true",
                   help="keep preprocessed images in memory (small data sets only)")
    p.add_argument("--no-resume", action="store_true",
                   help="start from scratch even if OUT/<member>/last.pt exists")
    p.add_argument("--operating-point", choices=OPERATING_POINT_METHODS, default=None,
                   help="how to choose per-body-part thresholds (default: the recipe's)")
    p.add_argument("--target-sensitivity", type=float, default=None,
                   help="sensitivity to reach with --operating-point sensitivity")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=run_train)


def register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "mura", help="evaluate one MURA member or the ensemble (image and study level)",
        description="Score checkpoints on a split and write report.md, report.json, roc.png and "
        "calibration.png: accuracy, precision, recall, F1, AUROC and Cohen's kappa with 95%% "
        "bootstrap intervals, overall and per body part, image and study level.",
    )
    _data_options(p)
    p.add_argument("--checkpoints", type=Path, default=None,
                   help="folder with <member>.pt files (all found are scored, plus their mean)")
    p.add_argument("--checkpoint", type=Path, action="append", default=[],
                   help="one checkpoint file (repeatable; alternative to --checkpoints)")
    p.add_argument("--split", choices=("test", "valid"), default="test",
                   help="held-out test split (from train, by patient) or MURA's valid split")
    p.add_argument("--out", type=Path, default=Path("runs/mura/report"),
                   help="report folder (default runs/mura/report)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples for the 95%% intervals (default 1000)")
    p.add_argument("--fit-operating-points", action="store_true",
                   help="first fit the ensemble's per-body-part thresholds on the valid split "
                   "and write CHECKPOINTS/ensemble_calibration.json (read by msk export)")
    p.add_argument("--operating-point", choices=OPERATING_POINT_METHODS,
                   default=DEFAULT_OPERATING_POINT,
                   help="threshold rule for --fit-operating-points")
    p.add_argument("--target-sensitivity", type=float, default=DEFAULT_TARGET_SENSITIVITY,
                   help="sensitivity to reach with --operating-point sensitivity")
    p.add_argument("--batch-size", type=int, default=PREDICT_BATCH_SIZE,
                   help=f"inference batch size (default {PREDICT_BATCH_SIZE})")
    p.set_defaults(handler=run_evaluate)


def _setup(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def _splits(args: argparse.Namespace) -> dict:
    from training.mura_data import load_splits

    parts = [p for p in args.body_parts.split(",") if p.strip()] or None
    return load_splits(args.data, body_parts=parts, extra_folders=args.extra_folder,
                       extra_csvs=args.extra_csv, test_fraction=args.test_fraction,
                       split_seed=args.split_seed)


def _weights_for(weights: str, architecture: str) -> str:
    """The weights argument for one architecture: a file, "none", or torchvision's ImageNet
    file (resolved, and downloaded if need be, before any training starts)."""
    if weights == "imagenet":
        from training.mura_models import imagenet_weights_file

        return str(imagenet_weights_file(architecture))
    path = Path(weights)
    if weights != "none" and path.is_dir():
        return str(path / f"{architecture}.pth")
    return weights


def _with_overrides(recipe: MuraRecipe, args: argparse.Namespace) -> MuraRecipe:
    """The recipe with the command line's overrides applied (validated like the recipe)."""
    overrides = {"epochs": args.epochs, "image_size": args.image_size,
                 "batch_size": args.batch_size, "lr": args.lr, "num_workers": args.workers}
    calibration = recipe.calibration
    if args.operating_point:
        calibration = dataclasses.replace(calibration, operating_point=args.operating_point)
    if args.target_sensitivity is not None:
        calibration = dataclasses.replace(calibration,
                                          target_sensitivity=args.target_sensitivity)
    return dataclasses.replace(recipe, calibration=calibration,
                               **{k: v for k, v in overrides.items() if v is not None})


def run_train(args: argparse.Namespace) -> int:
    import shutil

    from training.mura_data import DatasetError, describe, write_reference_csv
    from training.mura_models import WeightsUnavailable
    from training.mura_train import load_recipe, train_member

    _setup(args)
    try:
        recipes = [_with_overrides(load_recipe(name), args)
                   for name in args.recipe or DEFAULT_RECIPES]
    except RecipeError as exc:
        print(f"msk train mura: {exc}", file=sys.stderr)
        return 2
    try:
        weights = {r.architecture: _weights_for(args.weights, r.architecture) for r in recipes}
    except (WeightsUnavailable, ValueError) as exc:
        print(f"msk train mura: {exc}", file=sys.stderr)
        return 2
    try:
        splits = _splits(args)
    except (DatasetError, FileNotFoundError) as exc:
        print(f"msk train mura: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "splits.json").write_text(json.dumps(
        {name: describe(records) for name, records in splits.items()}
        | {"test_fraction": args.test_fraction, "split_seed": args.split_seed}, indent=2) + "\n")
    # The OOD reference of the export (issue 21): the images the members are trained on.
    write_reference_csv(splits["train"], args.out / OOD_REFERENCE_CSV)
    for recipe in recipes:
        result = train_member(
            recipe, splits["train"], splits["valid"], args.out / recipe.member,
            weights=weights[recipe.architecture], device=args.device,
            resume=not args.no_resume, cache=args.cache, progress=not args.no_progress)
        target = args.out / f"{recipe.member}.pt"
        shutil.copy2(result.checkpoint, target)
        print(json.dumps({"member": recipe.member, "checkpoint": str(target),
                          "best_epoch": result.best_epoch, "temperature": result.temperature,
                          "history": str(args.out / recipe.member / "metrics.csv")}),
              flush=True)
    if all((args.out / f"{m}.pt").is_file() for m in MURA_MEMBERS):
        _fit_points(args.out, splits["valid"], DEFAULT_OPERATING_POINT,
                    DEFAULT_TARGET_SENSITIVITY, args.device, args.cache)
    return 0


def _fit_points(checkpoint_dir: Path, valid: list, method: str, target: float, device: str,
                cache: bool) -> Path:
    from training.mura_evaluate import (
        ensemble_predictions,
        fit_ensemble_points,
        member_predictions,
        write_calibration,
    )

    members = [member_predictions(checkpoint_dir / f"{m}.pt", valid, _device(device), cache=cache)
               for m in MURA_MEMBERS]
    points = fit_ensemble_points(ensemble_predictions(members), valid, method, target)
    path = write_calibration(checkpoint_dir, points, method, valid)
    print(json.dumps({"ensemble_calibration": str(path), "operating_points": points}), flush=True)
    return path


def _device(requested: str) -> str:
    from training.mura_train import _device as resolve

    return str(resolve(requested))


def run_evaluate(args: argparse.Namespace, ood=None) -> int:
    """`msk evaluate mura`; `ood` (`training.mura_evaluate.OodSet`) is prepared by the command
    layer from `--ood-set` (msk/commands/evaluate.py: the statistics' fit lives in export)."""
    from training.mura_data import DatasetError
    from training.mura_evaluate import CALIBRATION_FILE, evaluate

    _setup(args)
    checkpoints: dict[str, Path] = {}
    if args.checkpoints is not None:
        checkpoints = {m: args.checkpoints / f"{m}.pt" for m in MURA_MEMBERS
                       if (args.checkpoints / f"{m}.pt").is_file()}
    for path in args.checkpoint:
        if not path.is_file():
            print(f"msk evaluate mura: checkpoint not found: {path}", file=sys.stderr)
            return 2
        checkpoints[path.stem] = path
    if not checkpoints:
        print("msk evaluate mura: no checkpoints (give --checkpoints DIR or --checkpoint FILE)",
              file=sys.stderr)
        return 2
    try:
        splits = _splits(args)
    except (DatasetError, FileNotFoundError) as exc:
        print(f"msk evaluate mura: {exc}", file=sys.stderr)
        return 2
    points = None
    if args.checkpoints is not None:
        if args.fit_operating_points:
            if len(checkpoints) != len(MURA_MEMBERS):
                print("msk evaluate mura: --fit-operating-points needs all four members",
                      file=sys.stderr)
                return 2
            _fit_points(args.checkpoints, splits["valid"], args.operating_point,
                        args.target_sensitivity, args.device, False)
        calibration = args.checkpoints / CALIBRATION_FILE
        if calibration.is_file():
            points = json.loads(calibration.read_text())["operating_points"]
    try:
        results = evaluate(checkpoints, splits[args.split], args.out, split_name=args.split,
                           ensemble_points=points, device=_device(args.device),
                           batch_size=args.batch_size, n_bootstrap=args.bootstrap, ood=ood)
    except (DatasetError, ValueError) as exc:
        print(f"msk evaluate mura: {exc}", file=sys.stderr)
        return 2
    trust = results.pop("_trust", {})
    summary = {name: {"study_auroc": res["study"]["overall"]["auroc"]["value"],
                      "image_auroc": res["image"]["overall"]["auroc"]["value"]}
               for name, res in results.items() if not name.startswith("_")}
    line: dict = {"report": str(args.out / "report.md"), "models": summary}
    if "member_spread" in trust:
        line["member_spread"] = {k: trust["member_spread"][k]
                                 for k in ("auroc_wrong", "error_rate")}
    if "ood" in trust:
        line["ood"] = {k: trust["ood"][k] for k in ("auroc", "fpr_at_95_tpr", "n_in", "n_out")}
    print(json.dumps(line), flush=True)
    return 0
