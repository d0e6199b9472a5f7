"""Evaluate MURA members and their ensemble the way the MURA benchmark does, and write a report.

Image level and study level (study probability = mean of its images' probabilities), overall and
per body part; accuracy, precision, recall, F1, AUROC and Cohen's kappa with 95 % bootstrap
intervals; confusion matrices; ROC and calibration plots (PNG); `report.md` + `report.json`.

Probabilities are computed exactly as the server computes them: each member gives
sigmoid(logit / T) with its fitted temperature, and the ensemble is the mean of the members.
Normal/abnormal calls use the stored per-body-part operating points (members: their own;
ensemble: `ensemble_calibration.json` next to the checkpoints, else the default threshold).

Knowing when not to answer (issue 21, item 7): with several members the report says whether the
members' spread (max - min of their probabilities, the served `MEMBER_SPREAD`) tracks wrong
calls (error rate per spread bin, AUROC of the spread for a wrong call); given an OOD set
(`OodSet`) it says how well the OOD score separates that set from the evaluated one (AUROC, FPR
at 95 % TPR) and what share of each the threshold at the stated percentile flags. The OOD score
is the served one: the members' pooled features from the same pass as their logits, scored by
statistics fitted on the reference set with the export's own fit (injected by the command, since
the statistics live in `export`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from msk.constants import (
    MURA_CALIBRATION_FILE,
    MURA_DEFAULT_THRESHOLD,
    MURA_IMAGE_SIZE,
    MURA_MEMBERS,
)
from training.mura_calibration import (
    OVERALL_KEY,
    apply_temperature,
    expected_calibration_error,
    operating_points,
    reliability_curve,
)
from training.mura_data import Record, fingerprint
from training.mura_metrics import (
    METRIC_NAMES,
    labelled_study_means,
    metrics_with_intervals,
    ood_detection,
    roc_curve,
    spread_calibration,
)
from training.recipe_schema import (
    DEFAULT_OPERATING_POINT,
    DEFAULT_TARGET_SENSITIVITY,
    PREDICT_BATCH_SIZE,
)

log = logging.getLogger("msk.evaluate.mura")
ENSEMBLE = "ensemble"
CALIBRATION_FILE = MURA_CALIBRATION_FILE


@dataclass
class Predictions:
    """Per-image calibrated probabilities of one model (member or ensemble) on one record list."""

    name: str
    probabilities: np.ndarray
    logits: np.ndarray | None = None  # members only (for ECE before temperature scaling)
    temperature: float = 1.0
    points: dict[str, float] = field(default_factory=dict)
    features: np.ndarray | None = None  # members, when asked: pooled penultimate features [N, D]


class OodScorer(Protocol):
    """What the OOD part needs of fitted statistics (`export.ood_stats.Reference` is one)."""

    def score(self, features: Mapping[str, np.ndarray]) -> np.ndarray: ...

    def threshold(self, percentile: float) -> float: ...


@dataclass
class OodSet:
    """An out-of-distribution evaluation: the OOD images, the reference set the statistics are
    fitted on (labels and body parts as `export.ood_stats.fit_reference` takes them), the fit
    itself, and the percentile whose threshold is reported."""

    records: Sequence[Record]
    reference: Sequence[Record]
    reference_labels: Sequence[int | None]
    fit: Callable[[Mapping[str, np.ndarray], Sequence[int | None], Sequence[str | None]],
                  OodScorer]
    percentile: float
    description: dict = field(default_factory=dict)


def member_predictions(checkpoint_path: Path, records: Sequence[Record], device: str = "cpu",
                       batch_size: int = PREDICT_BATCH_SIZE, cache: bool = False,
                       progress: bool = False, features: bool = False) -> Predictions:
    """Run one checkpoint over the records at the image size it was trained at (with
    `features`, also keep each image's pooled features from the same pass)."""
    from training.mura_data import MuraImageDataset
    from training.mura_models import load_checkpoint
    from training.mura_train import _device, predict_logits

    _device(device)  # also flushes denormals on CPU
    model, meta = load_checkpoint(Path(checkpoint_path))
    model = model.to(device)
    dataset = MuraImageDataset(records, int(meta.get("image_size", MURA_IMAGE_SIZE)), cache=cache)
    pooled = None
    if features:
        logits, pooled = _logits_and_features(model, dataset, batch_size, device)
    else:
        logits = predict_logits(model, dataset, batch_size, device, progress=progress)
    temperature = float(meta.get("temperature") or 1.0)
    return Predictions(name=meta.get("member", Path(checkpoint_path).stem),
                       probabilities=apply_temperature(logits, temperature), logits=logits,
                       temperature=temperature, points=dict(meta.get("operating_points") or {}),
                       features=pooled)


def _logits_and_features(model, dataset, batch_size: int, device: str
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode logits [N] and pooled features [N, D] from one pass (`forward_with_features`,
    what the exported backbone's LOGIT and FEATURES outputs are)."""
    import torch

    from training.mura_train import _batches

    model.eval()
    logits, pooled = [], []
    with torch.inference_mode():
        for x, _ in _batches(dataset, list(range(len(dataset))), batch_size, 0):
            logit, _, feats = model.forward_with_features(x.to(device))
            logits.append(logit.float().cpu().numpy()[:, 0])
            pooled.append(feats.float().cpu().numpy())
    if not logits:
        return np.zeros(0, np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(logits), np.concatenate(pooled)


def ensemble_predictions(members: Sequence[Predictions],
                         points: dict[str, float] | None = None) -> Predictions:
    """Mean of the members' calibrated probabilities (the served `mura_mean`)."""
    probs = np.mean([m.probabilities for m in members], axis=0)
    return Predictions(name=ENSEMBLE, probabilities=probs, points=dict(points or {}))


def fit_ensemble_points(ensemble: Predictions, records: Sequence[Record],
                        method: str = DEFAULT_OPERATING_POINT,
                        target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
                        ) -> dict[str, float]:
    """Per-body-part operating points of the ensemble probability, fitted on these records."""
    return operating_points([r.label for r in records], ensemble.probabilities,
                            [r.body_part for r in records], method, target_sensitivity)


def write_calibration(checkpoint_dir: Path, points: dict[str, float], method: str,
                      records: Sequence[Record]) -> Path:
    """Store the ensemble's operating points where `msk export --checkpoints` picks them up."""
    path = Path(checkpoint_dir) / CALIBRATION_FILE
    path.write_text(json.dumps({
        "operating_points": points, "method": method,
        "fitted_on": {"images": len(records), "fingerprint": fingerprint(records)},
    }, indent=2, sort_keys=True) + "\n")
    return path


def _thresholds(points: dict[str, float], parts: Sequence[str]) -> np.ndarray:
    default = points.get(OVERALL_KEY, MURA_DEFAULT_THRESHOLD)
    return np.array([points.get(p, default) for p in parts], dtype=np.float64)


def score_model(pred: Predictions, records: Sequence[Record], n_bootstrap: int = 1000,
                seed: int = 0) -> dict:
    """Image- and study-level metrics, overall and per body part, for one model."""
    labels = np.array([r.label for r in records])
    parts = [r.body_part for r in records]
    thresholds = _thresholds(pred.points, parts)
    study_ids, study_labels, study_probs = labelled_study_means(
        [r.study for r in records], labels, pred.probabilities)
    study_part = {r.study: r.body_part for r in records}
    study_parts = [study_part[s] for s in study_ids]
    study_thresholds = _thresholds(pred.points, study_parts)
    out: dict = {"temperature": pred.temperature, "operating_points": pred.points,
                 "image": {}, "study": {}}
    levels = {
        "image": (labels, pred.probabilities, thresholds, np.array(parts)),
        "study": (study_labels, study_probs, study_thresholds, np.array(study_parts)),
    }
    for level, (y, p, t, part_arr) in levels.items():
        out[level]["overall"] = metrics_with_intervals(y, p, t, n_bootstrap, seed)
        for part in sorted(set(part_arr.tolist())):
            mask = part_arr == part
            out[level][part] = metrics_with_intervals(y[mask], p[mask], t[mask], n_bootstrap,
                                                      seed)
    out["ece"] = {"after": expected_calibration_error(pred.probabilities, labels)}
    if pred.logits is not None:
        out["ece"]["before"] = expected_calibration_error(apply_temperature(pred.logits, 1.0),
                                                          labels)
    out["_curves"] = {"study": (study_labels, study_probs), "image": (labels, pred.probabilities)}
    return out


def _fmt(m: dict) -> str:
    if np.isnan(m["value"]):
        return "n/a"
    return f"{m['value']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"


def _plots(results: dict[str, dict], out_dir: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, res in results.items():
        y, p = res["_curves"]["study"]
        if len(set(y.tolist())) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {res['study']['overall']['auroc']['value']:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="Study-level ROC")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "roc.png", dpi=120)
    plt.close(fig)
    files["roc"] = "roc.png"

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, res in results.items():
        y, p = res["_curves"]["image"]
        mean_p, frac, _ = reliability_curve(p, y)
        ax.plot(mean_p, frac, "o-", ms=3, label=f"{name} (ECE {res['ece']['after']:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="mean predicted probability", ylabel="fraction abnormal",
           title="Calibration (image level, 10 bins)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "calibration.png", dpi=120)
    plt.close(fig)
    files["calibration"] = "calibration.png"
    return files


def _markdown(results: dict[str, dict], meta: dict, plots: dict[str, str]) -> str:
    lines = ["# MURA evaluation report", "",
             f"Split: {meta['split']} — {meta['images']} images, {meta['studies']} studies, "
             f"{meta['patients']} patients; data fingerprint `{meta['fingerprint'][:16]}…`.",
             "Study probability = mean of its images' probabilities; ensemble = mean of the "
             "members' calibrated probabilities (as served). Intervals: 95 % percentile "
             f"bootstrap ({meta['n_bootstrap']} resamples).", ""]
    header = "| model | level | " + " | ".join(METRIC_NAMES) + " | confusion [[TN,FP],[FN,TP]] |"
    lines += ["## Overall", "", header, "|" + "---|" * (len(METRIC_NAMES) + 3)]
    for name, res in results.items():
        for level in ("image", "study"):
            m = res[level]["overall"]
            lines.append(f"| {name} | {level} | " + " | ".join(_fmt(m[k]) for k in METRIC_NAMES)
                         + f" | {m['confusion']['matrix']} |")
    lines += ["", "## Calibration", "", "| model | temperature | ECE before | ECE after |",
              "|---|---|---|---|"]
    for name, res in results.items():
        before = res["ece"].get("before")
        lines.append(f"| {name} | {res['temperature']:.3f} | "
                     f"{'—' if before is None else f'{before:.3f}'} | {res['ece']['after']:.3f} |")
    for name, res in results.items():
        lines += ["", f"## {name}: per body part (study level)", "",
                  "| body part | studies (abnormal) | threshold | " + " | ".join(METRIC_NAMES)
                  + " |", "|" + "---|" * (len(METRIC_NAMES) + 3)]
        for part, m in res["study"].items():
            if part == "overall":
                continue
            thr = m["threshold"]
            thr_txt = f"{thr:.3f}" if isinstance(thr, float) else ", ".join(f"{t:.3f}"
                                                                             for t in thr)
            lines.append(f"| {part} | {m['n']['total']} ({m['n']['positive']}) | {thr_txt} | "
                         + " | ".join(_fmt(m[k]) for k in METRIC_NAMES) + " |")
    lines += ["", "## Plots", ""] + [f"![{k}]({v})" for k, v in plots.items()]
    return "\n".join(lines) + "\n"


def member_spread_report(members: Sequence[Predictions], ensemble: Predictions,
                         records: Sequence[Record]) -> dict:
    """Image level: the members' spread (max - min of their calibrated probabilities, what
    `mura_mean` serves as MEMBER_SPREAD) against the ensemble's wrong calls."""
    spread = np.ptp(np.stack([m.probabilities for m in members]), axis=0)
    labels = np.array([r.label for r in records])
    calls = ensemble.probabilities >= _thresholds(ensemble.points, [r.body_part for r in records])
    return spread_calibration(spread, calls != labels.astype(bool))


def ood_report(ood: OodSet, in_features: Mapping[str, np.ndarray],
               checkpoints: Mapping[str, Path], device: str, batch_size: int) -> dict:
    """The OOD score's separation of `ood.records` (positives) from the evaluated set (its
    members' features `in_features`), with statistics fitted on `ood.reference`."""
    def features_on(records: Sequence[Record]) -> dict[str, np.ndarray]:
        return {m: member_predictions(checkpoints[m], records, device, batch_size,
                                      features=True).features for m in checkpoints}

    log.info("OOD: features of %d reference and %d OOD images", len(ood.reference),
             len(ood.records))
    stats = ood.fit(features_on(ood.reference), ood.reference_labels,
                    [r.body_part or None for r in ood.reference])
    in_scores = stats.score(in_features)
    out_scores = stats.score(features_on(ood.records))
    threshold = stats.threshold(ood.percentile)
    return {**ood_detection(in_scores, out_scores), **ood.description,
            "percentile": ood.percentile, "threshold": threshold,
            "flagged_in": float(np.mean(in_scores > threshold)),
            "flagged_out": float(np.mean(out_scores > threshold)),
            "reference_images": len(ood.reference)}


def evaluate(checkpoints: dict[str, Path], records: Sequence[Record], out_dir: Path, *,
             split_name: str = "test", ensemble_points: dict[str, float] | None = None,
             device: str = "cpu", batch_size: int = PREDICT_BATCH_SIZE, n_bootstrap: int = 1000,
             seed: int = 0, cache: bool = False, progress: bool = False,
             ood: OodSet | None = None) -> dict:
    """Score every checkpoint (and their mean when there are several); write the report.

    With several members the report has `member_spread` (spread vs wrong calls); with `ood`
    (every member needed: the OOD score is the four members' mean) it has `ood`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if ood is not None and set(checkpoints) != set(MURA_MEMBERS):
        raise ValueError("an OOD evaluation needs all four members (the OOD score is their "
                         f"mean); have {', '.join(sorted(checkpoints))}")
    preds = []
    order = sorted(checkpoints, key=lambda m: MURA_MEMBERS.index(m)
                   if m in MURA_MEMBERS else len(MURA_MEMBERS))
    for member in order:
        log.info("predicting %s on %d images", member, len(records))
        preds.append(member_predictions(checkpoints[member], records, device, batch_size, cache,
                                        progress, features=ood is not None))
    members = list(preds)
    trust: dict = {}
    if len(preds) > 1:
        preds.append(ensemble_predictions(preds, ensemble_points))
        trust["member_spread"] = member_spread_report(members, preds[-1], records)
    if ood is not None:
        trust["ood"] = ood_report(ood, {m: p.features for m, p in zip(order, members,
                                                                      strict=True)},
                                  checkpoints, device, batch_size)
    results = {p.name: score_model(p, records, n_bootstrap, seed) for p in preds}
    plots = _plots(results, out_dir)
    meta = {"split": split_name, "images": len(records),
            "studies": len({r.study for r in records}),
            "patients": len({r.patient for r in records}),
            "fingerprint": fingerprint(records), "n_bootstrap": n_bootstrap,
            "checkpoints": {k: str(v) for k, v in checkpoints.items()}}
    (out_dir / "report.md").write_text(_markdown(results, meta, plots) + _trust_markdown(trust))
    public = {name: {k: v for k, v in res.items() if not k.startswith("_")}
              for name, res in results.items()}
    (out_dir / "report.json").write_text(json.dumps({"meta": meta, "models": public, **trust},
                                                    indent=2, default=float) + "\n")
    public["_probabilities"] = {p.name: p.probabilities for p in preds}
    public["_trust"] = trust
    return public


def _number(value: float) -> str:
    return "n/a" if value is None or np.isnan(value) else f"{value:.3f}"


def _trust_markdown(trust: dict) -> str:
    """The report's "knowing when not to answer" sections (issue 21)."""
    lines: list[str] = []
    spread = trust.get("member_spread")
    if spread:
        lines += ["", "## Member spread vs wrong calls (image level, ensemble)", "",
                  "Spread = max - min of the members' calibrated probabilities (the served "
                  "`member_spread`); a wrong call = the ensemble's call at its operating point "
                  f"differs from the label. AUROC of the spread for a wrong call: "
                  f"{_number(spread['auroc_wrong'])} (0.5 = no information); overall error "
                  f"rate {_number(spread['error_rate'])}.", "",
                  "| spread from | to | images | wrong | error rate |", "|---|---|---|---|---|"]
        lines += [f"| {b['low']:.3g} | {b['high']:.3g} | {b['n']} | {b['wrong']} | "
                  f"{b['error_rate']:.3f} |" for b in spread["bins"]]
    ood = trust.get("ood")
    if ood:
        lines += ["", "## Out-of-distribution detection", "",
                  f"In distribution: the evaluated split ({ood['n_in']} images); out of "
                  f"distribution: {ood.get('ood_set', 'the OOD set')} ({ood['n_out']} images). "
                  f"Statistics fitted on {ood['reference_images']} reference images "
                  f"({ood.get('reference', 'given')}).", "",
                  "| AUROC | FPR at 95 % TPR | threshold (percentile) | flagged in | "
                  "flagged out |", "|---|---|---|---|---|",
                  f"| {_number(ood['auroc'])} | {_number(ood['fpr_at_95_tpr'])} | "
                  f"{ood['threshold']:.3f} ({ood['percentile']:g}) | "
                  f"{ood['flagged_in']:.3f} | {ood['flagged_out']:.3f} |"]
    return "\n".join(lines) + ("\n" if lines else "")
