"""Conformal p-values and the combined OOD decision (issue 16 item 3): an in-distribution image is
flagged with probability <= alpha, for one score and for the combined rule. Numpy only."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mscvision.core.conformal import (ALPHA_SHARING, bonferroni_shares, calibration_needed, combine, p_value,
                                      smallest_p)

ALPHA = 0.05
TRIALS = 20_000
# three standard errors of a flag rate measured on TRIALS independent draws
TOLERANCE = 3 * math.sqrt(ALPHA * (1 - ALPHA) / TRIALS)


def test_p_value_counts_the_calibration_scores_at_least_as_high():
    calibration = [3.0, 1.0, 2.0, 2.0]
    assert p_value(2.0, calibration) == pytest.approx((1 + 3) / 5)  # ties count as "at least as high"
    assert p_value(2.5, calibration) == pytest.approx(2 / 5)
    assert p_value(9.0, calibration) == pytest.approx(1 / 5) == smallest_p(4)
    assert p_value(0.0, calibration) == 1.0
    assert np.allclose(p_value(np.array([0.0, 2.0, 9.0]), calibration), [1.0, 4 / 5, 1 / 5])  # vectorised


def test_nan_is_the_most_unusual_and_no_calibration_never_flags():
    assert p_value(float("nan"), [1.0, 2.0]) == pytest.approx(1 / 3)
    assert p_value(5.0, []) == 1.0


def test_calibration_needed_is_where_the_smallest_p_reaches_the_level():
    for level in (0.05, 0.0042, 0.01):
        n = calibration_needed(level)
        assert smallest_p(n) <= level < smallest_p(n - 1)


def _fresh_calibration_trials(rng, n_calibration: int, scores: int = 1, dependence: float = 0.0) -> np.ndarray:
    """TRIALS independent (calibration set + one test image) draws, all exchangeable: (TRIALS, n + 1, scores).
    ``dependence``: a shared factor correlating the scores of one image."""
    shared = rng.normal(size=(TRIALS, n_calibration + 1, 1))
    own = rng.standard_exponential((TRIALS, n_calibration + 1, scores))
    return dependence * shared + own


def test_one_score_flags_in_distribution_images_at_rate_alpha():
    rng = np.random.default_rng(0)
    n = 99  # (n + 1) * alpha = 5: the rate is exactly alpha, not just at most
    draws = _fresh_calibration_trials(rng, n)[:, :, 0]
    p = np.array([p_value(row[-1], row[:-1]) for row in draws])
    rate = np.mean(p <= ALPHA)
    assert abs(rate - ALPHA) <= TOLERANCE, rate
    # and p is uniform on {1/(n+1), ..., 1}: every level, not only alpha
    for level in (0.01, 0.2, 0.5):
        assert abs(np.mean(p <= level) - level) <= 3 * math.sqrt(level * (1 - level) / TRIALS)


def test_discrete_scores_with_ties_stay_at_most_alpha():
    rng = np.random.default_rng(1)
    draws = rng.integers(0, 4, size=(TRIALS, 200))  # a saturated-pixel count: mostly ties
    rate = np.mean([p_value(row[-1], row[:-1]) <= ALPHA for row in draws])
    assert rate <= ALPHA + TOLERANCE


@pytest.mark.parametrize("dependence", [0.0, 3.0])  # independent scores, and strongly correlated ones
def test_the_combined_rule_flags_at_most_alpha(dependence):
    rng = np.random.default_rng(2)
    names = ["learned", "focus_low", "saturated", "empty", "histogram"]
    shares = bonferroni_shares(names[1:], "learned")
    n = 159  # (n + 1) x each level is a whole number (alpha/2 -> 4, alpha/8 -> 1): no rounding down
    draws = _fresh_calibration_trials(rng, n, len(names), dependence)
    flagged, flagged_unshared = [], []
    for trial in draws:
        p = {name: p_value(trial[-1, k], trial[:-1, k]) for k, name in enumerate(names)}
        flagged.append(combine(p, ALPHA, shares).flagged)
        flagged_unshared.append(min(p.values()) <= ALPHA)  # every score at alpha: what sharing prevents
    rate = np.mean(flagged)
    assert rate <= ALPHA + TOLERANCE, rate
    if dependence == 0.0:  # independent: Bonferroni is nearly exact, and without it the rate is ~5 alpha
        assert rate >= ALPHA - 2 * TOLERANCE
        assert np.mean(flagged_unshared) > 3 * ALPHA


def test_shares_split_alpha_as_stated():
    shares = bonferroni_shares(["a", "b", "c", "d"], "learned")
    assert shares["learned"] == 0.5 and all(shares[k] == pytest.approx(0.125) for k in "abcd")
    assert sum(shares.values()) == pytest.approx(1.0)
    assert bonferroni_shares(["a", "b"]) == {"a": 0.5, "b": 0.5}
    assert bonferroni_shares([], "learned") == {"learned": 1.0}
    assert "alpha/2" in ALPHA_SHARING


def test_combine_gives_every_reason_that_fired_and_every_p_value():
    shares = {"a": 0.5, "b": 0.25, "c": 0.25}
    decision = combine({"a": 0.02, "b": 0.001, "c": 0.5}, ALPHA, shares)
    assert decision.flagged and len(decision.reasons) == 2
    assert decision.reasons[0].startswith("a:") and decision.reasons[1].startswith("b:")
    assert decision.p_values == {"a": 0.02, "b": 0.001, "c": 0.5} and decision.smallest_p == 0.001
    calm = combine({"a": 0.03, "b": 0.2}, ALPHA, shares)  # 0.03 > 0.5 * alpha: not fired
    assert not calm.flagged and calm.reasons == []
    worded = combine({"b": 0.001}, ALPHA, shares, lambda name, p, level: f"{name} at {p} under {level:g}")
    assert worded.reasons == ["b at 0.001 under 0.0125"]


def test_combine_refuses_alpha_nobody_accounted_for():
    with pytest.raises(ValueError, match="no share"):
        combine({"a": 0.01, "extra": 0.01}, ALPHA, {"a": 1.0})
    with pytest.raises(ValueError, match="sum to"):
        combine({"a": 0.01, "b": 0.01}, ALPHA, {"a": 0.8, "b": 0.8})
    with pytest.raises(ValueError, match="alpha"):
        combine({"a": 0.01}, 1.5, {"a": 1.0})
