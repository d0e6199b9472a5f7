"""Binary classification metrics with percentile-bootstrap 95 % intervals, and study aggregation.

Why our own implementation: the bootstrap calls each metric a thousand times per body part, so
they are plain vectorised numpy; `tests/test_mura_metrics.py` checks every one of them against
scikit-learn on random data (ties and degenerate cases included).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "auroc", "kappa")


def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """[[TN, FP], [FN, TP]] (scikit-learn's layout)."""
    y_true = np.asarray(y_true).astype(bool)
    y_pred = np.asarray(y_pred).astype(bool)
    tp = int(np.sum(y_true & y_pred))
    tn = int(np.sum(~y_true & ~y_pred))
    fp = int(np.sum(~y_true & y_pred))
    fn = int(np.sum(y_true & ~y_pred))
    return np.array([[tn, fp], [fn, tp]])


def _ratio(num: float, den: float) -> float:
    """scikit-learn's zero_division=0 convention."""
    return float(num / den) if den else 0.0


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def precision(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    (_, fp), (_, tp) = confusion(y_true, y_pred)
    return _ratio(tp, tp + fp)


def recall(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    (_, _), (fn, tp) = confusion(y_true, y_pred)
    return _ratio(tp, tp + fn)


def f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    (_, fp), (fn, tp) = confusion(y_true, y_pred)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def cohen_kappa(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Agreement beyond chance: (p_o - p_e) / (1 - p_e); 0 when chance agreement is total."""
    (tn, fp), (fn, tp) = confusion(y_true, y_pred)
    n = tn + fp + fn + tp
    if n == 0:
        return 0.0
    p_o = (tp + tn) / n
    p_e = ((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)) / (n * n)
    return _ratio(p_o - p_e, 1.0 - p_e)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties averaged (as the Mann-Whitney statistic needs)."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    # boundaries of tie groups
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_vals)) + 1]
    ends = np.r_[starts[1:], len(values)]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based positions start+1..end
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auroc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum statistic; NaN when only one class is present."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, starting at (0, 0) with threshold +inf;
    a sample is called positive when score >= threshold (scikit-learn's convention)."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s) - 1]
    tps = np.cumsum(y_sorted)[last_of_group]
    fps = (last_of_group + 1) - tps
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    thresholds = np.r_[np.inf, s_sorted[last_of_group]]
    return fpr, tpr, thresholds


def point_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float | np.ndarray,
                  ) -> dict[str, float]:
    """All METRIC_NAMES at a threshold (scalar, or one per sample for per-body-part operating
    points); a sample is called positive when score >= threshold."""
    y_pred = np.asarray(scores) >= threshold
    return {
        "accuracy": accuracy(y_true, y_pred),
        "precision": precision(y_true, y_pred),
        "recall": recall(y_true, y_pred),
        "f1": f1(y_true, y_pred),
        "auroc": auroc(y_true, scores),
        "kappa": cohen_kappa(y_true, y_pred),
    }


def bootstrap_intervals(y_true: np.ndarray, scores: np.ndarray, threshold: float | np.ndarray,
                        n_resamples: int = 1000, seed: int = 0, level: float = 0.95,
                        ) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of every metric (resampling evaluation units with
    replacement). Resamples where a metric is undefined (AUROC with one class) are dropped."""
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    t = np.broadcast_to(np.asarray(threshold, dtype=np.float64), s.shape)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in METRIC_NAMES}
    n = len(y)
    if n == 0:
        return {name: (float("nan"), float("nan")) for name in METRIC_NAMES}
    for _ in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        for name, value in point_metrics(y[idx], s[idx], t[idx]).items():
            if not np.isnan(value):
                draws[name].append(value)
    alpha = (1.0 - level) / 2.0
    out: dict[str, tuple[float, float]] = {}
    for name, values in draws.items():
        if values:
            lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
            out[name] = (float(lo), float(hi))
        else:
            out[name] = (float("nan"), float("nan"))
    return out


def metrics_with_intervals(y_true: np.ndarray, scores: np.ndarray, threshold: float | np.ndarray,
                           n_resamples: int = 1000, seed: int = 0) -> dict[str, dict]:
    """{metric: {"value", "low", "high"}} plus the confusion matrix and counts."""
    values = point_metrics(y_true, scores, threshold)
    intervals = bootstrap_intervals(y_true, scores, threshold, n_resamples, seed)
    out: dict[str, dict] = {
        name: {"value": values[name], "low": intervals[name][0], "high": intervals[name][1]}
        for name in METRIC_NAMES
    }
    out["confusion"] = {"matrix": confusion(y_true, np.asarray(scores) >= threshold).tolist(),
                        "layout": "[[TN, FP], [FN, TP]]"}
    out["n"] = {"total": int(len(y_true)), "positive": int(np.sum(y_true))}
    t = np.asarray(threshold, dtype=np.float64)
    out["threshold"] = float(t) if t.ndim == 0 else sorted(set(np.round(t, 6).tolist()))
    return out


def labelled_study_means(study_ids: Sequence[str], labels: Sequence[int],
                      probabilities: Sequence[float],
                      reduce: Callable[[np.ndarray], float] = np.mean,
                      ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Study probability = mean of its images (the MURA benchmark's rule); labels must agree."""
    grouped: dict[str, list[int]] = {}
    for i, sid in enumerate(study_ids):
        grouped.setdefault(sid, []).append(i)
    ids = sorted(grouped)
    lab = np.asarray(labels)
    prob = np.asarray(probabilities, dtype=np.float64)
    study_labels = np.empty(len(ids), dtype=np.int64)
    study_probs = np.empty(len(ids), dtype=np.float64)
    for k, sid in enumerate(ids):
        idx = grouped[sid]
        if len(set(lab[idx].tolist())) != 1:
            raise ValueError(f"study {sid!r} has images with different labels")
        study_labels[k] = lab[idx[0]]
        study_probs[k] = reduce(prob[idx])
    return ids, study_labels, study_probs


# --------------------------------------------------------------------------------------------
# Knowing when not to answer (issue 21, item 7): the OOD score and the members' spread
# --------------------------------------------------------------------------------------------
OOD_TARGET_TPR = 0.95
"""FPR is reported at this share of the OOD set caught (the usual "FPR at 95 % TPR")."""
SPREAD_BINS = 5
"""Quantile bins of `member_spread` in its calibration against wrong calls."""


def ood_detection(in_scores: np.ndarray, out_scores: np.ndarray) -> dict:
    """How well a score separates an OOD set (positives) from the evaluated set (negatives):
    AUROC, and the share of in-distribution images flagged at the lowest threshold that still
    flags `OOD_TARGET_TPR` of the OOD set (FPR at 95 % TPR); NaN when a side is empty."""
    s_in = np.asarray(in_scores, np.float64)
    s_out = np.asarray(out_scores, np.float64)
    y = np.r_[np.zeros(len(s_in), bool), np.ones(len(s_out), bool)]
    scores = np.r_[s_in, s_out]
    out = {"n_in": len(s_in), "n_out": len(s_out), "auroc": auroc(y, scores),
           "fpr_at_95_tpr": float("nan"), "target_tpr": OOD_TARGET_TPR}
    if len(s_in) and len(s_out):
        fpr, tpr, _ = roc_curve(y, scores)
        out["fpr_at_95_tpr"] = float(fpr[np.argmax(tpr >= OOD_TARGET_TPR - 1e-12)])
    return out


def spread_calibration(spread: np.ndarray, wrong: np.ndarray, bins: int = SPREAD_BINS) -> dict:
    """Does a larger `member_spread` mean more wrong calls? Error rate per quantile bin of the
    spread (ties kept together, so there may be fewer bins), and the AUROC of the spread as a
    predictor of a wrong call (0.5 = no information; NaN when every call is right or wrong)."""
    s = np.asarray(spread, np.float64)
    w = np.asarray(wrong).astype(bool)
    edges = np.unique(np.quantile(s, np.linspace(0.0, 1.0, bins + 1))) if len(s) else \
        np.zeros(1)
    which = np.searchsorted(edges[1:-1], s, side="right")
    table = []
    for b in range(max(len(edges) - 1, 1)):
        mask = which == b
        if not mask.any():
            continue
        table.append({"low": float(s[mask].min()), "high": float(s[mask].max()),
                      "n": int(mask.sum()), "wrong": int(w[mask].sum()),
                      "error_rate": float(w[mask].mean())})
    return {"n": len(s), "error_rate": float(w.mean()) if len(w) else float("nan"),
            "auroc_wrong": auroc(w, s), "bins": table}
