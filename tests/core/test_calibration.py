"""Temperature scaling, calibration figures and the certified abstention threshold (core, numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from mscvision.core.calibration import apply_temperature, calibration_figures, fit_temperature, reliability_bins
from mscvision.core.selective import (THRESHOLD_GRID, certify_threshold, clopper_pearson_upper, first_tested_count,
                                      minimum_labelled,
                                      oracle_coverage, risk_coverage_curve, selective_figures)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _calibrated_draw(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True logits and labels drawn from their softmax: probabilities that are calibrated by construction."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, (n, classes))
    p = np.exp(_log_softmax(z))
    labels = np.array([rng.choice(classes, p=row) for row in p])
    return z, labels


@pytest.mark.parametrize("true_temperature", [0.6, 2.5])
def test_fit_recovers_a_known_temperature(true_temperature):
    z, labels = _calibrated_draw(20_000, 5, seed=1)
    model_log_probs = _log_softmax(z * true_temperature)  # over- (T > 1) or under-confident (T < 1)
    fitted = fit_temperature(model_log_probs, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.05)
    before = calibration_figures(np.exp(model_log_probs), labels)
    after = calibration_figures(apply_temperature(model_log_probs, fitted), labels)
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"] and after["ece"] < 0.015


def test_temperature_of_view_means_is_fitted_on_the_views():
    """With several views per image the calibrated probability is the mean of each view's tempered
    softmax: the fit uses exactly that, and ignores unknown labels (-1)."""
    z, labels = _calibrated_draw(8_000, 4, seed=2)
    rng = np.random.default_rng(3)
    views = np.stack([_log_softmax(3.0 * (z + rng.normal(0, 0.1, z.shape))) for _ in range(4)])
    labels = labels.copy()
    labels[:500] = -1
    fitted = fit_temperature(views, labels)
    assert 2.5 < fitted < 3.5
    p = apply_temperature(views, fitted)
    assert p.shape == (8_000, 4) and np.allclose(p.sum(axis=1), 1)
    with pytest.raises(ValueError, match="no calibration image"):
        fit_temperature(views[:, :10], np.full(10, -1))


def test_ece_nll_brier_on_hand_made_probabilities():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    labels = np.array([0, 1, 0, 1])
    f = calibration_figures(probs, labels)
    # bins: 0.9 (two images, one right) → |0.5 - 0.9|; 0.6 (right) → 0.4; 0.8 (right) → 0.2
    assert f["ece"] == pytest.approx((2 * 0.4 + 0.4 + 0.2) / 4)
    assert f["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.1, 0.6, 0.8])))
    assert f["brier"] == pytest.approx(np.mean([0.02, 1.62, 0.32, 0.08]))
    bins = reliability_bins(probs, labels)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 4
    assert reliability_bins(np.array([[0.0, 1.0]]), np.array([1]))[-1]["count"] == 1  # 1.0 is in the last bin


def test_clopper_pearson_matches_the_beta_quantile():
    # scipy.stats.beta.ppf(0.95, e + 1, n - e) for these cases
    assert clopper_pearson_upper(1, 10, 0.05) == pytest.approx(0.3941633, abs=1e-6)
    assert clopper_pearson_upper(5, 20, 0.05) == pytest.approx(0.4555824, abs=1e-6)
    assert clopper_pearson_upper(3, 500, 0.05) == pytest.approx(0.0154337, abs=1e-6)
    assert clopper_pearson_upper(0, 10, 0.05) == pytest.approx(1 - 0.05 ** 0.1)
    assert clopper_pearson_upper(0, 0, 0.05) == 1.0 and clopper_pearson_upper(4, 4, 0.05) == 1.0


def test_threshold_search_finds_the_known_answer():
    """700 confident, all correct; 300 unsure, half wrong: the certified threshold admits exactly the
    700 (the strictest grid point above 0.6 would too, but the search goes as far as it may)."""
    confidence = np.r_[np.full(700, 0.995), np.full(300, 0.6)]
    correct = np.r_[np.ones(700, bool), np.arange(300) % 2 == 0]
    cert = certify_threshold(confidence, correct, 0.99, 0.05)
    assert cert.certified
    assert cert.threshold == min(t for t in THRESHOLD_GRID if t > 0.6)
    assert cert.coverage == pytest.approx(0.7) and cert.selective_accuracy == 1.0
    assert cert.risk_bound == pytest.approx(1 - 0.05 ** (1 / 700))
    test = selective_figures(confidence, correct, cert.threshold)
    assert test["coverage"] == pytest.approx(0.7) and test["n_labelled"] == 700
    assert oracle_coverage(confidence, correct, 0.99) == {"threshold": 0.995, "coverage": 0.7,
                                                          "selective_accuracy": 1.0}


def test_the_bound_refuses_what_the_data_cannot_support():
    # too few images: zero errors among 100 cannot show 99% at delta 0.05 (it takes 299); the scan
    # starts where two errors could still be certified (about 630)
    assert minimum_labelled(0.99, 0.05) == 299
    assert clopper_pearson_upper(2, first_tested_count(0.99, 0.05), 0.05) <= 0.01
    assert clopper_pearson_upper(2, first_tested_count(0.99, 0.05) - 7, 0.05) > 0.01
    few = certify_threshold(np.full(100, 0.999), np.ones(100, bool), 0.99, 0.05)
    assert not few.certified and "every image goes to review" in few.reason
    assert selective_figures(np.full(100, 0.999), np.ones(100, bool), few.threshold, few.certified)["n_labelled"] == 0
    # enough images, but one in 50 is wrong at every confidence (evenly spread, so no lucky streak
    # of correct ones at the top): 98% accuracy everywhere, and no threshold may claim 99%
    confidence = np.linspace(1.0, 0.5, 5000)
    correct = np.arange(5000) % 50 != 10
    refused = certify_threshold(confidence, correct, 0.99, 0.05)
    assert not refused.certified and refused.threshold == 1.0
    # the same data certify a target they do support
    assert certify_threshold(confidence, correct, 0.9, 0.05).certified


def test_the_guarantee_holds_on_repeated_draws():
    """Many calibration draws from one distribution: the labelled images' true accuracy (measured on
    a large fresh sample) falls below the target in at most about delta of them."""
    rng = np.random.default_rng(5)

    def draw(n):
        confidence = rng.beta(5, 1, n)
        return confidence, rng.random(n) < confidence ** 0.5  # accuracy rises with confidence

    fresh_c, fresh_ok = draw(200_000)
    failures = 0
    draws = 100
    for _ in range(draws):
        cert = certify_threshold(*draw(1500), 0.95, 0.1)
        if cert.certified and fresh_ok[fresh_c >= cert.threshold].mean() < 0.95:
            failures += 1
    assert failures / draws <= 0.1 + 3 * np.sqrt(0.1 * 0.9 / draws)


def test_risk_coverage_curve_is_ordered_and_thinned():
    rng = np.random.default_rng(1)
    confidence = rng.uniform(0, 1, 5000)
    correct = rng.random(5000) < confidence
    curve = risk_coverage_curve(confidence, correct)
    assert len(curve["coverage"]) <= 200 and curve["coverage"][-1] == 1.0
    assert np.all(np.diff(curve["coverage"]) > 0) and np.all(np.diff(curve["threshold"]) < 0)
    assert curve["selective_accuracy"][-1] == pytest.approx(correct.mean())


def test_group_redraws_report_how_often_the_target_is_missed():
    """On groups whose images are exchangeable, the certified threshold misses the target in about
    delta of the draws at most; a draw that certifies nothing counts as no miss."""
    from mscvision.core.guarantee_check import redraw_guarantee

    rng = np.random.default_rng(2)
    n = 3000
    confidence = rng.beta(6, 1, n)
    labels = (rng.random(n) >= confidence ** 0.3).astype(int)  # class 0 is right, more often when confident
    probs = np.stack([confidence, 1 - confidence], axis=1)
    report = redraw_guarantee(probs, labels, np.arange(n) % 60, 0.95, 0.1, draws=40)
    assert report["certified_draws"] > 25 and 0 < report["mean_coverage"] < 1
    assert report["below_target"] <= 0.1 + 3 * np.sqrt(0.1 * 0.9 / 40)
    assert report["clearly_below"] <= report["below_target"]


def test_design_effect_counts_clustered_errors_as_fewer_independent_images():
    from mscvision.core.selective import design_effect

    groups = np.arange(1000) % 20  # every group spans every confidence
    spread = np.zeros(1000, bool)
    spread[[200 + 21 * j for j in range(8)]] = True  # 8 errors below the 200 most confident, in 8 groups
    clustered = np.zeros(1000, bool)
    clustered[[200 + 20 * j for j in range(8)]] = True  # about the same ranks, all in group 0
    assert design_effect(groups, spread) == pytest.approx(1.0, abs=0.1)
    assert design_effect(groups, clustered) > 3
    assert design_effect(groups, np.zeros(1000, bool)) == 1.0 and design_effect(np.zeros(1000), clustered) == 1.0
    # the same errors certify less once their clustering is allowed for; spread errors cost nothing
    confidence = np.linspace(1.0, 0.9, 1000)
    alone = certify_threshold(confidence, ~clustered, 0.95, 0.05)
    grouped = certify_threshold(confidence, ~clustered, 0.95, 0.05, groups)
    assert alone.coverage == 1.0 and grouped.coverage < 0.3 and "design effect" in grouped.reason
    assert certify_threshold(confidence, ~spread, 0.95, 0.05, groups).coverage == 1.0
