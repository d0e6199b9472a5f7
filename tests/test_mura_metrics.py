"""Metric, bootstrap and calibration code checked against scikit-learn and known answers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from msk.constants import MURA_BODY_PARTS
from training import mura_calibration as calibration
from training import mura_metrics as metrics


def _cases():
    rng = np.random.default_rng(7)
    for n in (2, 5, 37, 400):
        y = rng.integers(0, 2, n)
        y[0], y[-1] = 0, 1  # both classes present
        yield y, rng.random(n)                               # continuous scores
        yield y, np.round(rng.random(n), 1)                  # heavy ties
        yield y, y * 0.5 + rng.random(n) * 0.6               # informative


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
def test_point_metrics_match_sklearn(threshold: float) -> None:
    for y, s in _cases():
        pred = s >= threshold
        ours = metrics.point_metrics(y, s, threshold)
        assert ours["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
        assert ours["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0))
        assert ours["recall"] == pytest.approx(skm.recall_score(y, pred, zero_division=0))
        assert ours["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0))
        assert ours["auroc"] == pytest.approx(skm.roc_auc_score(y, s))
        expected_kappa = skm.cohen_kappa_score(y, pred)
        if np.isnan(expected_kappa):  # sklearn: 0/0 when both raters are constant and agree
            expected_kappa = 0.0
        assert ours["kappa"] == pytest.approx(expected_kappa, abs=1e-12)
        assert metrics.confusion(y, pred).tolist() == skm.confusion_matrix(y, pred,
                                                                           labels=[0, 1]).tolist()


def test_roc_curve_matches_sklearn() -> None:
    for y, s in _cases():
        fpr, tpr, thr = metrics.roc_curve(y, s)
        sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, s, drop_intermediate=False)
        np.testing.assert_allclose(fpr, sk_fpr)
        np.testing.assert_allclose(tpr, sk_tpr)
        np.testing.assert_allclose(thr[1:], sk_thr[1:])
        assert np.trapz(tpr, fpr) == pytest.approx(skm.roc_auc_score(y, s))


def test_auroc_undefined_with_one_class() -> None:
    assert np.isnan(metrics.auroc(np.ones(4), np.arange(4.0)))


def test_bootstrap_interval_contains_estimate_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(3)
    widths = []
    for n in (60, 2000):
        y = rng.integers(0, 2, n)
        s = y * 0.6 + rng.random(n)
        out = metrics.metrics_with_intervals(y, s, 0.8, n_resamples=300, seed=1)
        for name in metrics.METRIC_NAMES:
            assert out[name]["low"] <= out[name]["value"] + 1e-9 <= out[name]["high"] + 2e-9
        widths.append(out["auroc"]["high"] - out["auroc"]["low"])
    assert widths[1] < widths[0] / 2
    # Same seed, same interval; another seed, another interval.
    a = metrics.bootstrap_intervals(y, s, 0.8, 200, seed=5)
    assert a == metrics.bootstrap_intervals(y, s, 0.8, 200, seed=5)
    assert a != metrics.bootstrap_intervals(y, s, 0.8, 200, seed=6)


def test_per_sample_thresholds() -> None:
    y = np.array([0, 1, 0, 1])
    s = np.array([0.4, 0.45, 0.7, 0.9])
    t = np.array([0.3, 0.3, 0.8, 0.8])  # two body parts with different operating points
    assert metrics.point_metrics(y, s, t)["accuracy"] == pytest.approx(0.75)


def test_study_aggregation_is_the_mean_and_checks_labels() -> None:
    ids, labels, probs = metrics.labelled_study_means(["b", "a", "b", "a"], [1, 0, 1, 0],
                                                   [0.2, 0.5, 0.6, 0.1])
    assert ids == ["a", "b"]
    assert labels.tolist() == [0, 1]
    np.testing.assert_allclose(probs, [0.3, 0.4])
    with pytest.raises(ValueError, match="different labels"):
        metrics.labelled_study_means(["a", "a"], [0, 1], [0.1, 0.2])


def test_temperature_recovers_known_scale_and_lowers_ece() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0.0, 2.0, 20_000)
    y = (rng.random(true_logits.size) < 1 / (1 + np.exp(-true_logits))).astype(int)
    overconfident = true_logits * 3.0
    t = calibration.fit_temperature(overconfident, y)
    assert t == pytest.approx(3.0, rel=0.05)
    before = calibration.expected_calibration_error(calibration.apply_temperature(overconfident,
                                                                                  1.0), y)
    after = calibration.expected_calibration_error(calibration.apply_temperature(overconfident, t),
                                                   y)
    assert after < before / 3
    # NLL at the fitted T is no worse than at nearby temperatures.
    assert calibration.nll(overconfident, y, t) <= calibration.nll(overconfident, y, t * 1.1)
    assert calibration.nll(overconfident, y, t) <= calibration.nll(overconfident, y, t / 1.1)


def test_ece_known_value() -> None:
    # Two bins: p=0.1 with 0/2 positives (gap 0.1), p=0.9 with 1/2 positives (gap 0.4).
    p = np.array([0.1, 0.1, 0.9, 0.9])
    y = np.array([0, 0, 1, 0])
    assert calibration.expected_calibration_error(p, y) == pytest.approx(0.25)


def test_operating_points_youden_and_sensitivity() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    fpr, tpr, thr = skm.roc_curve(y, p, drop_intermediate=False)
    assert calibration.choose_threshold(y, p, "youden") == pytest.approx(thr[np.argmax(tpr - fpr)])
    t90 = calibration.choose_threshold(y, p, "sensitivity", target_sensitivity=1.0)
    assert t90 == pytest.approx(0.4)  # highest threshold that still calls every abnormal
    assert np.mean(p[y == 1] >= t90) == 1.0
    with pytest.raises(ValueError, match="operating point method"):
        calibration.choose_threshold(y, p, "magic")


def test_operating_points_per_part_with_fallback() -> None:
    rng = np.random.default_rng(1)
    n = 400
    parts = np.where(np.arange(n) < 300, "wrist", "finger")
    y = rng.integers(0, 2, n)
    p = np.where(parts == "wrist", 0.3 + 0.4 * y, 0.6 + 0.3 * y) + rng.normal(0, 0.05, n)
    parts[-3:] = "hand"
    y[-3:] = 1  # too few cases for a hand threshold of its own
    points = calibration.operating_points(y, p, parts.tolist())
    assert set(points) == {*MURA_BODY_PARTS, calibration.OVERALL_KEY}
    assert 0.3 < points["wrist"] < 0.7
    assert 0.6 < points["finger"] < 0.9
    assert points["hand"] == points[calibration.OVERALL_KEY]
    assert points["elbow"] == points[calibration.OVERALL_KEY]
