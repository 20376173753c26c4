"""Class fractions (core/quantify.py): intervals narrow with tiles and widen with clustering; adjusted
classify-and-count removes the bias a model's own confusions put into a count, and its interval covers
the true fraction; a class the model cannot tell apart is flagged, never silently corrected."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mscvision.core.errors import ConfigError
from mscvision.core.quantify import (MIN_CLUSTERS, MIN_SEPARATION, NO_TILES, NOT_ADJUSTABLE, PACC, UNADJUSTED,
                                     clopper_pearson_interval, effective_size, estimate_fractions, naive_fractions,
                                     pacc_interval, quantification_problem, simplex_least_squares,
                                     unjudgeable_reason)
from mscvision.core.selective import design_effect

CLASSES = ["undifferentiated", "differentiated"]
CONFIDENCE = 0.95
ERRS = (0.06, 0.10)   # the simulated model reads this share of each true class's tiles as the other class


def _model_probabilities(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A simulated calibrated model of known confusion: a tile it errs on looks like the other class."""
    errs = rng.random(len(truth)) < np.take(ERRS, truth)
    looks_differentiated = (truth == 1) ^ errs
    p = np.where(looks_differentiated, rng.beta(9, 2, len(truth)), rng.beta(1.5, 15, len(truth)))
    return np.c_[1 - p, p]


def _labels(probs: np.ndarray, threshold: float = 0.7) -> np.ndarray:
    return np.where(probs.max(axis=1) >= threshold, probs.argmax(axis=1), -1)


@pytest.fixture(scope="module")
def calibration() -> dict:
    """The quantification block as training/calibrate.py writes it, from a large labelled set."""
    rng = np.random.default_rng(7)
    truth = np.repeat([0, 1], 40_000)
    probs = _model_probabilities(truth, rng)
    mean = np.array([probs[truth == c].mean(axis=0) for c in (0, 1)])
    return {"mean_probability": np.round(mean, 6).tolist(), "n_per_class": [40_000, 40_000]}


def _well(rng, fraction: float, clusters: int = 30, per_cluster: int = 16, spread: float = 20.0):
    """Tiles of a well whose blocks differ in their local fraction (Beta around ``fraction``)."""
    local = (rng.beta(fraction * spread, (1 - fraction) * spread, clusters) if 0 < fraction < 1
             else np.full(clusters, fraction))
    cluster = np.repeat(np.arange(clusters), per_cluster)
    truth = (rng.random(len(cluster)) < local[cluster]).astype(int)
    probs = _model_probabilities(truth, rng)
    return probs, _labels(probs), cluster, truth


def _differentiated(probs, labels, clusters, quantification):
    return estimate_fractions(probs, labels, clusters, quantification, CONFIDENCE, task="differentiation",
                              classes=CLASSES)[1]


def test_clopper_pearson_matches_the_exact_binomial_interval():
    low, high = clopper_pearson_interval(5, 20, 0.95)
    assert low == pytest.approx(0.08657, abs=1e-4) and high == pytest.approx(0.49105, abs=1e-4)
    assert clopper_pearson_interval(0, 10, 0.95)[0] == 0.0 and clopper_pearson_interval(10, 10, 0.95)[1] == 1.0
    assert clopper_pearson_interval(0, 0, 0.95) == (0.0, 1.0)
    low, high = clopper_pearson_interval(2.5, 9.5, 0.95)  # real-valued counts (n / deff)
    assert 0 < low < 2.5 / 9.5 < high < 1


def test_twelve_tiles_give_a_wider_interval_than_twelve_thousand(calibration):
    widths = {}
    for n in (12, 12_000):
        probs = np.tile([[0.8, 0.2], [0.9, 0.1], [0.3, 0.7]], (n // 3, 1))  # the same fraction at both sizes
        for name, quantification in (("pacc", calibration), ("raw", None)):
            f = _differentiated(probs, _labels(probs), np.arange(n), quantification)
            assert f.low <= f.estimate <= f.high
            widths[name, n] = f.high - f.low
    for name in ("pacc", "raw"):
        assert widths[name, 12] > 5 * widths[name, 12_000] > 0


def test_clustered_tiles_give_a_wider_interval_than_independent_ones(calibration):
    rng = np.random.default_rng(3)
    clusters, per = 60, 20
    cluster_value = np.where(rng.random(clusters) < 0.3, 0.85, 0.05)   # every tile of a block alike
    p = np.repeat(cluster_value, per)
    probs = np.c_[1 - p, p]
    blocks = np.repeat(np.arange(clusters), per)
    clustered = _differentiated(probs, _labels(probs), blocks, calibration)
    independent = _differentiated(probs, _labels(probs), np.arange(len(p)), calibration)
    assert clustered.estimate == pytest.approx(independent.estimate)
    assert clustered.design_effect == pytest.approx(per, rel=1e-6)        # identical within: rho = 1
    assert independent.design_effect == 1.0
    assert clustered.n_effective == pytest.approx(clusters, rel=1e-6)
    assert clustered.high - clustered.low > 2 * (independent.high - independent.low)


def test_few_clusters_count_as_one_observation_each():
    rng = np.random.default_rng(4)
    p = rng.random(4 * 100) * 0.2
    n_eff, deff = effective_size(p, np.repeat(np.arange(MIN_CLUSTERS - 1), 100))
    assert n_eff == MIN_CLUSTERS - 1 and deff == pytest.approx(100)
    n_eff, deff = effective_size(p, np.arange(400) % 8)
    assert n_eff > 8  # 8 clusters of independent values: their (near-zero) correlation is estimated instead


def test_design_effect_of_real_values_measures_the_within_spread():
    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(40), 25)
    binary = (rng.random(1000) < np.repeat(rng.random(40), 25)).astype(float)
    # 0/1 values: the measured within-group sum of squares is the old m * rate * (1 - rate)
    _, index = np.unique(groups, return_inverse=True)
    m, e = np.bincount(index).astype(float), np.bincount(index, weights=binary)
    rate, p = e / m, e.sum() / m.sum()
    between, within = np.sum(m * (rate - p) ** 2) / 39, np.sum(m * rate * (1 - rate)) / (1000 - 40)
    rho = (between - within) / (between + (25 - 1) * within)
    assert design_effect(groups, binary) == pytest.approx(1 + 24 * max(rho, 0))
    # real values identical within a group: rho = 1 (the 0/1 formula would have read them as noisy)
    same = np.repeat(rng.random(40) * 0.5 + 0.25, 25)
    assert design_effect(groups, same) == pytest.approx(25)
    assert design_effect(groups, rng.random(1000)) < 1.5  # independent values


def test_pacc_removes_the_bias_of_a_known_confusion(calibration):
    rng = np.random.default_rng(11)
    for fraction in (0.0, 0.05, 0.6):  # near 0.35 the two confusions cancel in the count
        probs, labels, clusters, truth = _well(rng, fraction, clusters=400, per_cluster=25)
        f = _differentiated(probs, labels, clusters, calibration)
        true = truth.mean()
        assert f.kind == PACC
        assert abs(f.naive - true) > 0.025       # the count carries the model's confusions
        assert abs(f.raw_mean - true) > 0.025    # so does the plain mean probability
        assert abs(f.estimate - true) < 0.01     # corrected
        assert f.low <= true <= f.high and f.low <= f.estimate <= f.high


def test_the_interval_covers_the_true_fraction_over_many_wells(calibration):
    rng = np.random.default_rng(12)
    covered, unadjusted_covered, wells = 0, 0, 0
    for fraction in (0.02, 0.05, 0.1, 0.3):
        for _ in range(75):
            probs, labels, clusters, truth = _well(rng, fraction)
            f = _differentiated(probs, labels, clusters, calibration)
            raw = _differentiated(probs, labels, clusters, None)
            covered += f.low <= truth.mean() <= f.high
            unadjusted_covered += raw.low <= truth.mean() <= raw.high
            wells += 1
    assert covered / wells >= 0.9, f"coverage {covered / wells:.3f} over {wells} wells"
    # the check can fail: the same interval around the uncorrected mean misses the truth in most wells
    assert unadjusted_covered / wells < 0.5


def _small_calibration(rng, per_class: int) -> dict:
    """A quantification block fitted on ``per_class`` labelled tiles of each class (as training/calibrate.py
    writes it), drawn afresh: its M is an estimate, off the model's true confusions by sampling error."""
    truth = np.repeat([0, 1], per_class)
    probs = _model_probabilities(truth, rng)
    mean = np.array([probs[truth == c].mean(axis=0) for c in (0, 1)])
    return {"mean_probability": np.round(mean, 6).tolist(), "n_per_class": [per_class, per_class]}


def test_a_small_calibration_set_widens_the_interval_so_that_it_still_covers():
    """M from 20 tiles a class, a new calibration draw per well (coverage is over both draws). Taken as
    known (the same block without its counts: the old interval), M's error shifts every estimate of a
    well the same way and the interval misses the truth in about a quarter of the wells; carried in
    the interval, coverage is at least the nominal 95 %."""
    rng = np.random.default_rng(21)
    covered, covered_as_known, wells = 0, 0, 0
    for fraction in (0.02, 0.05, 0.1, 0.3):
        for _ in range(75):
            block = _small_calibration(rng, 20)
            as_known = {"mean_probability": block["mean_probability"]}
            probs, labels, clusters, truth = _well(rng, fraction)
            f = _differentiated(probs, labels, clusters, block)
            old = _differentiated(probs, labels, clusters, as_known)
            assert f.estimate == pytest.approx(old.estimate)  # the point is the same; only the interval widens
            assert f.low <= old.low + 1e-9 and f.high >= old.high - 1e-9
            covered += f.low <= truth.mean() <= f.high
            covered_as_known += old.low <= truth.mean() <= old.high
            wells += 1
    assert covered / wells >= CONFIDENCE, f"coverage {covered / wells:.3f} over {wells} wells"
    assert covered_as_known / wells < 0.85, f"M taken as known covered {covered_as_known / wells:.3f}"


def test_a_huge_calibration_set_leaves_the_interval_as_it_was(calibration):
    """40,000 calibration tiles a class: M's own error is negligible, and the interval is the map of
    q's Clopper-Pearson interval as before (the block without counts), within a few thousandths."""
    rng = np.random.default_rng(22)
    as_known = {"mean_probability": calibration["mean_probability"]}
    for fraction in (0.0, 0.05, 0.3):
        probs, labels, clusters, _ = _well(rng, fraction)
        f = _differentiated(probs, labels, clusters, calibration)
        old = _differentiated(probs, labels, clusters, as_known)
        assert "sampling error is in the interval" in f.method and "is not in the interval" in old.method
        assert f.low == pytest.approx(old.low, abs=0.003) and f.high == pytest.approx(old.high, abs=0.003)
        assert (f.high - f.low) <= 1.03 * (old.high - old.low)


def test_the_pacc_interval_is_the_map_of_q_when_m_is_exact_and_wider_when_not():
    q, q_int, a, b = 0.2, (0.15, 0.26), 0.8, 0.1
    low, high = pacc_interval(q, q_int, a, (a, a), b, (b, b))
    assert low == pytest.approx((0.15 - b) / (a - b)) and high == pytest.approx((0.26 - b) / (a - b))
    wide_low, wide_high = pacc_interval(q, q_int, a, (0.7, 0.88), b, (0.06, 0.15))
    assert wide_low < low and wide_high > high and wide_low <= (q - b) / (a - b) <= wide_high
    # errors add in quadrature: narrower than taking every estimate at its interval's end together
    assert wide_low > (0.15 - 0.15) / (0.88 - 0.15) and wide_high < (0.26 - 0.06) / (0.7 - 0.06)
    assert pacc_interval(0.95, (0.93, 0.97), a, (0.78, 0.82), b, (0.09, 0.11)) == (1.0, 1.0)  # beyond a: clipped
    # an M whose a - b could be near 0: pi is not pinned down at all
    assert pacc_interval(0.4, (0.35, 0.45), 0.6, (0.2, 0.95), 0.3, (0.02, 0.65)) == (0.0, 1.0)


def test_three_classes_are_corrected_one_against_the_rest():
    rng = np.random.default_rng(13)
    confusion = np.array([[0.90, 0.06, 0.04], [0.10, 0.80, 0.10], [0.05, 0.15, 0.80]])  # what a tile looks like

    def tiles(truth):
        looks = np.array([rng.choice(3, p=confusion[t]) for t in truth])
        return rng.dirichlet([1.0, 1.0, 1.0], len(truth)) * 0.3 + np.eye(3)[looks] * 0.7

    cal_truth = np.repeat([0, 1, 2], 8000)
    cal = tiles(cal_truth)
    block = {"mean_probability": [cal[cal_truth == c].mean(axis=0).tolist() for c in range(3)],
             "n_per_class": [8000] * 3}
    truth = rng.choice(3, 20_000, p=[0.7, 0.2, 0.1])
    probs = tiles(truth)
    fractions = estimate_fractions(probs, probs.argmax(axis=1), None, block, CONFIDENCE, classes=["a", "b", "c"])
    for c, f in enumerate(fractions):
        true = (truth == c).mean()
        assert abs(f.estimate - true) < 0.01 < abs(f.naive - true)
        assert f.low <= true <= f.high
    assert sum(f.estimate for f in fractions) == pytest.approx(1.0, abs=0.01)


def test_the_simplex_least_squares_is_exact_and_stays_on_the_simplex():
    m = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.05, 0.15, 0.8]])
    pi = np.array([0.2, 0.3, 0.5])
    assert np.allclose(simplex_least_squares(m, pi @ m), pi)
    outside = simplex_least_squares(m, np.array([0.99, 0.0, 0.01]))  # no pi on the simplex gives it
    assert outside.min() >= 0 and outside.sum() == pytest.approx(1.0) and outside[0] > 0.9
    restricted = simplex_least_squares(m, pi @ m, support=[0, 2])  # a class left out stays at 0
    assert restricted[1] == 0 and restricted.sum() == pytest.approx(1.0)


def test_a_class_the_model_cannot_separate_is_not_adjusted(calibration):
    weak = {"mean_probability": [[0.6, 0.4], [0.5, 0.5]], "n_per_class": [100, 100]}  # a - b = 0.1 < 0.2
    probs = np.tile([[0.55, 0.45]], (500, 1))
    f = _differentiated(probs, _labels(probs), np.arange(500), weak)
    assert f.kind == NOT_ADJUSTABLE and str(MIN_SEPARATION) in f.method
    assert f.estimate == pytest.approx(0.45) and f.low < 0.45 < f.high   # the raw mean, said to be unadjusted
    assert unjudgeable_reason(f) and "separation 0.10" in unjudgeable_reason(f)
    unseen = {"mean_probability": [[0.9, 0.1], [0.0, 0.0]], "n_per_class": [100, 0]}
    f = _differentiated(probs, _labels(probs), np.arange(500), unseen)
    assert f.kind == NOT_ADJUSTABLE and "no tile of this class" in f.method
    assert unjudgeable_reason(_differentiated(probs, _labels(probs), np.arange(500), calibration)) is None


def test_no_quantification_is_the_raw_mean_said_so():
    probs = np.tile([[0.8, 0.2]], (100, 1))
    f = _differentiated(probs, _labels(probs), np.arange(100), None)
    assert f.kind == UNADJUSTED and f.estimate == pytest.approx(0.2) == f.raw_mean
    assert unjudgeable_reason(f) is None


def test_no_tiles_is_the_whole_range_and_no_estimate(calibration):
    f = _differentiated(np.zeros((0, 2)), np.zeros(0, int), np.zeros(0, int), calibration)
    assert (f.low, f.high, f.n, f.method) == (0.0, 1.0, 0, NO_TILES)
    assert math.isnan(f.estimate) and math.isnan(f.naive) and unjudgeable_reason(f)
    assert f.to_dict()["estimate"] is None and f.to_dict()["high"] == 1.0


def test_never_a_zero_width_interval(calibration):
    # every tile far below what the model gives a clean well: the estimate clips to 0, the interval does not
    probs = np.tile([[0.999, 0.001]], (2000, 1))
    f = _differentiated(probs, _labels(probs), np.arange(2000) // 16, calibration)
    assert f.estimate == 0.0 == f.low and f.high > 0
    everything = np.tile([[0.0, 1.0]], (2000, 1))
    g = _differentiated(everything, _labels(everything), np.arange(2000) // 16, calibration)
    assert g.estimate == 1.0 == g.high and g.low < 1


def test_naive_counts_only_the_labelled_tiles():
    labels = np.array([0, 0, 1, -1, -1, 1, 0, -1])
    assert np.allclose(naive_fractions(labels, 3), [3 / 5, 2 / 5, 0])
    assert np.all(np.isnan(naive_fractions(np.array([-1, -1]), 2)))


@pytest.mark.parametrize("block, says", [
    ({"mean_probability": [[1, 0, 0]]}, "must be 2 x 2"),
    ({"mean_probability": [[0.5, 0.7], [0.1, 0.9]]}, "row 0 sums to 1.200"),
    ({"mean_probability": [[0.9, 0.1], [0.1, 0.9]], "n_per_class": [1]}, "n_per_class"),
    ({"mean_probability": [[1.2, -0.2], [0.1, 0.9]]}, "every entry in [0, 1]"),
    ([[0.9, 0.1]], "must be a mapping"),
])
def test_a_malformed_quantification_block_is_named(block, says):
    assert says in quantification_problem(block, 2)
    with pytest.raises(ConfigError, match="task differentiation"):
        _differentiated(np.tile([[0.5, 0.5]], (4, 1)), np.zeros(4, int), np.arange(4), block)
