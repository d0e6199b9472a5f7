"""Train one MURA ensemble member from a recipe: the seed study's loop, made resumable.

Per epoch: shuffle (seeded per epoch) -> batch augmentation on preprocessed tensors -> weighted
BCE on the logit -> Adam; then the validation loss drives ReduceLROnPlateau and early stopping.
`last.pt` (full state: model, optimiser, scheduler, history) is written every epoch so an
interrupted run resumes where it stopped and, because every random draw is seeded from
(seed, epoch), ends with the same weights as an uninterrupted CPU run. After training the best
epoch is calibrated (temperature + operating points on the validation split) and written as
`<member>.pt` in the checkpoint format `export.repository.build_repository` consumes.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from training.mura_data import (
    MuraImageDataset,
    Record,
    class_counts,
    fingerprint,
    with_duplicated_abnormal,
)
from training.recipe_schema import (
    PREDICT_BATCH_SIZE,
    AugmentSpec,
    MuraRecipe,
    RecipeError,
    parse_recipe,
    read_recipe,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger("msk.train.mura")
HISTORY_FIELDS = ("epoch", "train_loss", "val_loss", "val_auroc", "lr", "seconds")


def load_recipe(path_or_name: str | Path) -> MuraRecipe:
    """A recipe file, or the name of one in training/recipes/ (e.g. `mura_densenet169_a`),
    validated against the MURA schema (`training.recipe_schema`)."""
    return read_recipe("mura", path_or_name)


def _same_recipe(stored: object, recipe: MuraRecipe, source: Path) -> bool:
    """Whether a resumed run's stored recipe is `recipe` (older runs stored the raw YAML: it is
    read through the schema, so defaults it left out still compare equal)."""
    try:
        return parse_recipe("mura", stored, str(source)) == recipe
    except RecipeError:
        return False


def class_weights(records: Sequence[Record]) -> tuple[float, float]:
    """Inverse class frequency, normalised so a balanced set gets (1, 1):
    w_c = N / (2 * N_c) for c in {normal, abnormal} (scikit-learn's "balanced")."""
    n_neg, n_pos = class_counts(records)
    n = n_neg + n_pos
    if n_neg == 0 or n_pos == 0:
        raise ValueError(f"training set needs both classes (normal={n_neg}, abnormal={n_pos})")
    return n / (2.0 * n_neg), n / (2.0 * n_pos)


@dataclass
class TrainResult:
    checkpoint: Path
    history: list[dict]
    best_epoch: int
    temperature: float
    operating_points: dict[str, float]


def _device(requested: str):
    """Resolve "auto"/"cpu"/"cuda[:N]". On CPU also flush denormals to zero: freshly initialised
    DenseNet/ResNet layers produce subnormal floats whose arithmetic is 20-30x slower on x86
    (measured here: 1.4 s vs 27-45 s per DenseNet-169 step), without changing results."""
    import torch

    torch.set_flush_denormal(True)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} requested but CUDA is not available")
    return torch.device(requested)


def _batches(dataset: MuraImageDataset, order: Sequence[int], batch_size: int, num_workers: int):
    """Yield (pixels, labels) batches in `order`; a DataLoader only when workers are wanted."""
    import torch

    if num_workers > 0:
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, list(order)), batch_size=batch_size,
            shuffle=False, num_workers=num_workers, persistent_workers=False)
        for x, y, _ in loader:
            yield x, y
        return
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        items = [dataset[i] for i in idx]
        yield torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items])


def predict_logits(model, dataset: MuraImageDataset, batch_size: int = PREDICT_BATCH_SIZE,
                   device: str = "cpu", num_workers: int = 0, progress: bool = False) -> np.ndarray:
    """Eval-mode logits for every record of `dataset`, in order."""
    import torch
    from tqdm import tqdm

    model.eval()
    out: list[np.ndarray] = []
    order = list(range(len(dataset)))
    n_batches = math.ceil(len(order) / batch_size)
    with torch.inference_mode():
        for x, _ in tqdm(_batches(dataset, order, batch_size, num_workers), total=n_batches,
                         disable=not progress, desc="predict", leave=False):
            out.append(model(x.to(device)).float().cpu().numpy()[:, 0])
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _write_history(path: Path, history: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows({k: row[k] for k in HISTORY_FIELDS} for row in history)


@dataclass
class _Plan:
    """Everything the epoch loop and the calibration need, decided before the first step: the
    data, the model and its optimiser state, and where a resumed run starts."""

    recipe: MuraRecipe
    out_dir: Path
    dev: torch.device
    class_weights: tuple[float, float]
    train_set: MuraImageDataset
    valid_set: MuraImageDataset
    valid_records: Sequence[Record]
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    scaler: torch.amp.GradScaler
    history: list[dict]
    best_loss: float = math.inf
    best_epoch: int = 0
    start_epoch: int = 1

    @property
    def on_gpu(self) -> bool:
        return self.dev.type == "cuda"

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def best_state_path(self) -> Path:
        return self.out_dir / "best_state.pt"


def train_member(
    recipe: MuraRecipe,
    train_records: Sequence[Record],
    valid_records: Sequence[Record],
    out_dir: Path,
    *,
    weights: str | Path = "none",
    device: str = "auto",
    resume: bool = True,
    cache: bool = False,
    max_steps_per_epoch: int | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train one member; returns the calibrated checkpoint `<out_dir>/<member>.pt`.

    validate (device, both classes, a resumable `last.pt` of the same recipe) -> plan (data,
    model, optimiser, resumed state) -> run the epochs -> calibrate the best one and write it.
    `max_steps_per_epoch` caps an epoch (CI smoke runs); `on_step(step, loss)` observes every
    optimiser step (the CI test uses it to assert that the loss falls).
    """
    out_dir = Path(out_dir)
    dev, balance, state = _validate_training(recipe, train_records, out_dir, device, resume)
    plan = _plan_training(recipe, train_records, valid_records, out_dir, dev, balance, state,
                          weights=weights, cache=cache)
    _run_epochs(plan, num_workers=0 if cache else recipe.num_workers,
                max_steps_per_epoch=max_steps_per_epoch, progress=progress, on_step=on_step)
    return _calibrate_and_write(plan, train_records)


def _validate_training(recipe: MuraRecipe, train_records: Sequence[Record], out_dir: Path,
                       device: str, resume: bool
                       ) -> tuple[torch.device, tuple[float, float], dict | None]:
    """(device, class weights, the state to resume from) or the error that stops the run before
    any work: no such device, a training set of one class, a `last.pt` of another recipe."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    dev = _device(device)
    weights = class_weights(train_records)
    last_path = out_dir / "last.pt"
    if not (resume and last_path.is_file()):
        return dev, weights, None
    state = torch.load(last_path, map_location=dev, weights_only=False)
    if not _same_recipe(state["recipe"], recipe, last_path):
        raise ValueError(f"{last_path} was written by a different recipe; use a new output "
                         "folder or --no-resume")
    return dev, weights, state


def _plan_training(recipe: MuraRecipe, train_records: Sequence[Record],
                   valid_records: Sequence[Record], out_dir: Path, dev: torch.device,
                   balance: tuple[float, float], state: dict | None, *, weights: str | Path,
                   cache: bool) -> _Plan:
    """The datasets, the model, its optimiser, scheduler and scaler, and the resumed state."""
    import torch

    from training.mura_models import build_backbone

    w_neg, w_pos = balance
    epoch_records = (with_duplicated_abnormal(train_records)
                     if recipe.duplicate_abnormal else list(train_records))
    train_set = MuraImageDataset(epoch_records, recipe.image_size, cache=cache)
    valid_set = MuraImageDataset(valid_records, recipe.image_size, cache=cache)
    log.info("%s: %d training samples (%d abnormal), %d validation images, class weights "
             "normal=%.3f abnormal=%.3f, device %s", recipe.member, len(epoch_records),
             sum(r.label for r in epoch_records), len(valid_records), w_neg, w_pos, dev)
    on_gpu = dev.type == "cuda"
    model = build_backbone(recipe.architecture, weights=weights, seed=recipe.seed,
                           dropout=recipe.dropout).to(dev)
    if on_gpu and recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr,
                                 weight_decay=recipe.weight_decay)
    plateau = recipe.reduce_lr_on_plateau
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=plateau.factor, patience=plateau.patience,
        min_lr=plateau.min_lr)
    scaler = torch.amp.GradScaler("cuda", enabled=on_gpu and recipe.amp)
    plan = _Plan(recipe, out_dir, dev, balance, train_set, valid_set, valid_records, model,
                 optimizer, scheduler, scaler, history=[])
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        plan.history, plan.best_loss = state["history"], state["best_loss"]
        plan.best_epoch, plan.start_epoch = state["best_epoch"], state["epoch"] + 1
        log.info("%s: resuming after epoch %d", recipe.member, state["epoch"])
    return plan


def _run_epochs(plan: _Plan, *, num_workers: int, max_steps_per_epoch: int | None,
                progress: bool, on_step: Callable[[int, float], None] | None) -> None:
    """The epochs from `plan.start_epoch` until the recipe's last or early stopping; after each,
    `last.pt`, `best_state.pt` (when it improved) and `metrics.csv` are written."""
    import torch

    from training.mura_metrics import auroc

    recipe, model, dev = plan.recipe, plan.model, plan.dev
    seed, batch_size, member = recipe.seed, recipe.batch_size, recipe.member
    spec = recipe.augment if recipe.augment.enabled else None
    w_neg, w_pos = plan.class_weights
    w = torch.tensor([w_neg, w_pos], device=dev)
    step = sum(int(h.get("steps", 0)) for h in plan.history)
    y_val = np.array([r.label for r in plan.valid_records])
    for epoch in range(plan.start_epoch, recipe.epochs + 1):
        if plan.best_epoch and epoch - plan.best_epoch > recipe.early_stopping.patience:
            break
        started = time.perf_counter()
        order_gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        aug_gen = torch.Generator().manual_seed(seed * 100_003 + epoch + 50_000)
        torch.manual_seed(seed * 100_003 + epoch + 70_000)  # dropout
        order = torch.randperm(len(plan.train_set), generator=order_gen).tolist()
        n_batches = math.ceil(len(order) / batch_size)
        if max_steps_per_epoch:
            n_batches = min(n_batches, max_steps_per_epoch)
            order = order[: n_batches * batch_size]
        model.train()
        losses: list[float] = []
        with contextlib.closing(_epoch_steps(plan, order, num_workers, spec, aug_gen, w,
                                             desc=f"{member} epoch {epoch}", total=n_batches,
                                             progress=progress)) as steps:
            for loss in steps:
                step += 1
                losses.append(loss)
                if on_step is not None:
                    on_step(step, loss)
        val_logits = predict_logits(model, plan.valid_set, batch_size * 2, str(dev))
        val_w = np.where(y_val == 1, w_pos, w_neg)
        val_loss = float(np.mean(val_w * (np.logaddexp(0.0, val_logits) - y_val * val_logits)))
        val_auroc = auroc(y_val, val_logits)
        plan.scheduler.step(val_loss)
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
               "val_auroc": val_auroc,
               "lr": plan.optimizer.param_groups[0]["lr"],
               "seconds": round(time.perf_counter() - started, 1), "steps": len(losses)}
        plan.history.append(row)
        log.info("%s epoch %d: train_loss %.4f val_loss %.4f val_auroc %.4f lr %.1e (%.0f s)",
                 member, epoch, row["train_loss"], val_loss, val_auroc, row["lr"],
                 row["seconds"])
        if val_loss < plan.best_loss - recipe.early_stopping.min_delta:
            plan.best_loss, plan.best_epoch = val_loss, epoch
            torch.save(model.state_dict(), plan.best_state_path)
        torch.save({"model": model.state_dict(),
                    "optimizer": plan.optimizer.state_dict(),
                    "scheduler": plan.scheduler.state_dict(),
                    "scaler": plan.scaler.state_dict(),
                    "history": plan.history, "best_loss": plan.best_loss,
                    "best_epoch": plan.best_epoch, "epoch": epoch,
                    "recipe": recipe.to_dict()}, plan.last_path)
        _write_history(plan.out_dir / "metrics.csv", plan.history)


def _epoch_steps(plan: _Plan, order: list[int], num_workers: int, spec: AugmentSpec | None,
                 aug_gen: torch.Generator, w: torch.Tensor, *, desc: str, total: int,
                 progress: bool) -> Iterator[float]:
    """One epoch's optimiser steps, yielding the loss after each. The progress bar and the
    batch source (DataLoader workers) are released in one place, the ExitStack, also when the
    caller stops early (an exception from `on_step`, Ctrl-C)."""
    import torch
    from tqdm import tqdm

    from training.mura_augment import augment_batch

    recipe, model, dev = plan.recipe, plan.model, plan.dev
    use_amp = plan.on_gpu and recipe.amp
    with contextlib.ExitStack() as cleanup:
        batches = cleanup.enter_context(contextlib.closing(
            _batches(plan.train_set, order, recipe.batch_size, num_workers)))
        bar = cleanup.enter_context(tqdm(batches, total=total, disable=not progress, desc=desc,
                                         leave=False))
        recent: list[float] = []
        for x, y in bar:
            if spec is not None:
                x = augment_batch(x, spec, aug_gen)
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            if plan.on_gpu and recipe.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, enabled=use_amp):
                logit = model(x)[:, 0].float()
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(logit, y, reduction="none")
                    * w[y.long()]).mean()
            plan.optimizer.zero_grad(set_to_none=True)
            plan.scaler.scale(loss).backward()
            plan.scaler.step(plan.optimizer)
            plan.scaler.update()
            value = float(loss.detach())
            recent = (recent + [value])[-20:]
            bar.set_postfix(loss=f"{np.mean(recent):.4f}")
            yield value


def _calibrate_and_write(plan: _Plan, train_records: Sequence[Record]) -> TrainResult:
    """Calibrate the best epoch on the validation split (temperature, operating points) and
    write `<member>.pt` in the format `export.repository.build_repository` reads."""
    import torch

    from msk.provenance import current_commit
    from training.mura_calibration import (
        apply_temperature,
        expected_calibration_error,
        fit_temperature,
        operating_points,
    )
    from training.mura_metrics import auroc, labelled_study_means

    recipe, dev, valid_records = plan.recipe, plan.dev, plan.valid_records
    model = plan.model
    model.load_state_dict(
        torch.load(plan.best_state_path, map_location=dev, weights_only=True))
    model = model.to(memory_format=torch.contiguous_format)
    val_logits = predict_logits(model, plan.valid_set, recipe.batch_size * 2, str(dev))
    y_val = np.array([r.label for r in valid_records])
    calib = recipe.calibration
    temperature = fit_temperature(val_logits, y_val) if calib.temperature else 1.0
    p_before, p_after = apply_temperature(val_logits, 1.0), apply_temperature(val_logits,
                                                                              temperature)
    points = operating_points(y_val, p_after, [r.body_part for r in valid_records],
                              method=calib.operating_point,
                              target_sensitivity=calib.target_sensitivity)
    _, s_lab, s_prob = labelled_study_means([r.study for r in valid_records], y_val, p_after)
    w_neg, w_pos = plan.class_weights
    metrics = {
        "best_epoch": plan.best_epoch, "val_loss": plan.best_loss,
        "val_image_auroc": auroc(y_val, val_logits), "val_study_auroc": auroc(s_lab, s_prob),
        "ece_before": expected_calibration_error(p_before, y_val),
        "ece_after": expected_calibration_error(p_after, y_val),
        "class_weights": {"normal": w_neg, "abnormal": w_pos},
        "epochs_run": len(plan.history),
    }
    checkpoint = {
        "member": recipe.member, "architecture": recipe.architecture,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "image_size": recipe.image_size, "recipe": recipe.to_dict(),
        "dataset_fingerprint": fingerprint(list(train_records) + list(valid_records)),
        "metrics": metrics, "temperature": float(temperature), "operating_points": points,
        "commit": current_commit(),
    }
    final_path = plan.out_dir / f"{recipe.member}.pt"
    torch.save(checkpoint, final_path)
    log.info("%s: best epoch %d, T=%.3f, ECE %.3f -> %.3f, wrote %s", recipe.member,
             plan.best_epoch, temperature, metrics["ece_before"], metrics["ece_after"],
             final_path)
    return TrainResult(final_path, plan.history, plan.best_epoch, float(temperature), points)
