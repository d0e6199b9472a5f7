"""The evaluation's trust metrics (issue 21, item 7): OOD detection (AUROC, FPR at 95 % TPR) and
the members' spread against wrong calls, checked against scikit-learn on random data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from training.mura_metrics import OOD_TARGET_TPR, ood_detection, spread_calibration


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ood_detection_matches_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    in_scores = rng.gamma(2.0, 1.0, 300).round(1)           # rounded: ties on both sides
    out_scores = rng.gamma(3.0, 1.0, 120).round(1)
    got = ood_detection(in_scores, out_scores)
    y = np.r_[np.zeros(300), np.ones(120)]
    scores = np.r_[in_scores, out_scores]
    assert got["auroc"] == pytest.approx(roc_auc_score(y, scores))
    fpr, tpr, _ = roc_curve(y, scores)
    assert got["fpr_at_95_tpr"] == pytest.approx(fpr[tpr >= OOD_TARGET_TPR].min())
    assert (got["n_in"], got["n_out"]) == (300, 120)


def test_ood_detection_extremes() -> None:
    perfect = ood_detection(np.array([0.5, 0.9, 1.0]), np.array([3.0, 4.0]))
    assert perfect["auroc"] == 1.0 and perfect["fpr_at_95_tpr"] == 0.0
    useless = ood_detection(np.array([5.0, 6.0]), np.array([1.0, 2.0]))
    assert useless["auroc"] == 0.0 and useless["fpr_at_95_tpr"] == 1.0
    assert np.isnan(ood_detection(np.array([1.0]), np.array([]))["auroc"])


def test_spread_calibration_bins_and_auroc() -> None:
    rng = np.random.default_rng(4)
    spread = rng.uniform(0, 0.6, 1000)
    wrong = rng.uniform(0, 1, 1000) < spread               # wrong more often when spread is high
    got = spread_calibration(spread, wrong, bins=5)
    assert got["n"] == 1000 and sum(b["n"] for b in got["bins"]) == 1000
    assert len(got["bins"]) == 5
    rates = [b["error_rate"] for b in got["bins"]]
    assert rates == sorted(rates) and rates[-1] > 2 * rates[0]
    assert got["auroc_wrong"] == pytest.approx(roc_auc_score(wrong, spread))
    assert got["error_rate"] == pytest.approx(wrong.mean())
    for b in got["bins"]:
        assert b["low"] <= b["high"] and b["wrong"] <= b["n"]


def test_spread_calibration_degenerate() -> None:
    """Tied spreads stay in one bin; all-right calls give no AUROC rather than a number."""
    got = spread_calibration(np.zeros(10), np.zeros(10, bool))
    assert [b["n"] for b in got["bins"]] == [10] and np.isnan(got["auroc_wrong"])
