"""Temperature scaling, expected calibration error and per-body-part operating points.

Why temperature scaling: one scalar T fitted on the validation split (minimising the negative
log-likelihood of sigmoid(logit / T)) fixes over-confidence without changing the ranking, so the
AUROC is untouched and the served probability means what it says. The server applies T inside
each member (`PROBABILITY = sigmoid(logit / T)`), so T travels in the checkpoint.

Operating points: a threshold per body part chosen on validation probabilities, either by
Youden's J (max sensitivity + specificity - 1) or as the highest threshold that still reaches a
target sensitivity (a screening setting). They are stored with the models and returned by the
clients as the normal/abnormal call.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from msk.constants import MURA_BODY_PARTS, MURA_DEFAULT_THRESHOLD, MURA_OVERALL_OPERATING_POINT
from training.mura_metrics import roc_curve
from training.recipe_schema import (
    DEFAULT_OPERATING_POINT,
    DEFAULT_TARGET_SENSITIVITY,
    OPERATING_POINT_METHODS,
)

MIN_POSITIVES_FOR_POINT = 5
"""Fewer abnormal (or normal) validation cases than this in a body part: use the overall point."""

OVERALL_KEY = MURA_OVERALL_OPERATING_POINT
"""Key of the all-body-parts operating point in the stored mapping (used for unknown parts)."""


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean binary cross-entropy of sigmoid(logit / T), computed stably."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    y = np.asarray(labels, dtype=np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(logits: np.ndarray, labels: np.ndarray,
                    bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """T minimising the validation NLL (golden-section search on log T; the NLL is unimodal
    in 1/T for a fixed set of logits, and a 1-D search needs no optimiser dependency)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if len(logits) == 0 or len(set(labels.tolist())) < 2:
        return 1.0
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, labels, np.exp(a)), nll(logits, labels, np.exp(b))
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, labels, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, labels, np.exp(b))
    return float(np.exp((lo + hi) / 2.0))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray,
                               n_bins: int = 10) -> float:
    """ECE with equal-width bins on the abnormal probability: sum_b |B|/n * |mean(y) - mean(p)|."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if len(p) == 0:
        return float("nan")
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(y[mask].mean() - p[mask].mean())
    return float(ece)


def reliability_curve(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 10,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean predicted, observed fraction abnormal, count) per non-empty bin, for the plot."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    mean_p, frac, count = [], [], []
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            mean_p.append(p[mask].mean())
            frac.append(y[mask].mean())
            count.append(int(mask.sum()))
    return np.array(mean_p), np.array(frac), np.array(count)


def choose_threshold(labels: np.ndarray, probabilities: np.ndarray,
                     method: str = DEFAULT_OPERATING_POINT,
                     target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY) -> float:
    """One operating point. Degenerate input (one class) -> MURA_DEFAULT_THRESHOLD."""
    if method not in OPERATING_POINT_METHODS:
        raise ValueError(f"operating point method must be one of {OPERATING_POINT_METHODS}, "
                         f"got {method!r}")
    y = np.asarray(labels)
    if len(y) == 0 or len(set(y.tolist())) < 2:
        return MURA_DEFAULT_THRESHOLD
    fpr, tpr, thresholds = roc_curve(y, probabilities)
    finite = np.isfinite(thresholds)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    if method == "youden":
        k = int(np.argmax(tpr - fpr))  # first (highest threshold) among ties
    else:
        reaching = np.flatnonzero(tpr >= target_sensitivity)
        k = int(reaching[0]) if len(reaching) else len(thresholds) - 1
    return float(thresholds[k])


def operating_points(labels: Sequence[int], probabilities: Sequence[float],
                     body_parts: Sequence[str], method: str = DEFAULT_OPERATING_POINT,
                     target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
                     ) -> dict[str, float]:
    """{body_part: threshold} for every MURA body part, plus "default" (the overall threshold).
    Parts with too few cases of either class (or absent) fall back to the overall threshold
    rather than overfit a handful of studies."""
    y = np.asarray(labels)
    p = np.asarray(probabilities, dtype=np.float64)
    parts = np.asarray(body_parts)
    overall = choose_threshold(y, p, method, target_sensitivity)
    points = {OVERALL_KEY: overall, **{part: overall for part in MURA_BODY_PARTS}}
    for part in sorted(set(parts.tolist())):
        mask = parts == part
        n_pos = int(y[mask].sum())
        n_neg = int(mask.sum()) - n_pos
        if min(n_pos, n_neg) < MIN_POSITIVES_FOR_POINT:
            points[part] = overall
        else:
            points[part] = choose_threshold(y[mask], p[mask], method, target_sensitivity)
    return points


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities, exactly as the served model computes them."""
    return _sigmoid(np.asarray(logits, dtype=np.float64) / temperature)
