"""Class fractions (core/quantify.py): intervals narrow with tiles and widen with clustering; adjusted
classify-and-count removes the bias a model's own confusions put into a count, and its interval covers
the true fraction; a class the model cannot tell apart is flagged, never silently corrected."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mscvision.core.errors import ConfigError
from mscvision.core.quantify import (MIN_CLUSTERS, MIN_SEPARATION, MIN_WELL_TILES, MIN_WELLS, NO_TILES,
                                     NOT_ADJUSTABLE, PACC, UNADJUSTED, clopper_pearson_interval, effective_size,
                                     estimate_fractions, load_quantification, naive_fractions, pacc_interval,
                                     quantification_problem, simplex_least_squares, student_t_quantile,
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


# --- wells whose confusions differ (issue 17: a new well's M is a draw, not the pooled mean) -----------

def _beta(rng, mean, sd, size=None):
    """Beta draws of a given mean and standard deviation."""
    concentration = mean * (1 - mean) / sd ** 2 - 1
    return rng.beta(mean * concentration, (1 - mean) * concentration, size)


def _confusion(rng, varies: bool) -> tuple[float, float]:
    """One well's (a, b): the mean probability a differentiated tile puts on its class, and an
    undifferentiated one on it. Varying: a ~ Beta(mean 0.85, sd 0.15), b ~ Beta(mean 0.06, sd 0.04)."""
    return (_beta(rng, 0.85, 0.15), _beta(rng, 0.06, 0.04)) if varies else (0.85, 0.06)


def _tiles_of(rng, truth: np.ndarray, a: float, b: float) -> np.ndarray:
    mean = np.where(truth == 1, a, b)
    p = rng.beta(mean * 8, (1 - mean) * 8)
    return np.c_[1 - p, p]


def _calibration_wells(rng, varies: bool, wells: int = 12, per_class=(200, 60)) -> dict:
    """The block scripts/qc_quantification.py writes from ``wells`` labelled wells, each with its own
    confusions: pooled M and counts, and a per-well row for each well and class."""
    rows, probs, truth = [], [], []
    for w in range(wells):
        a, b = _confusion(rng, varies)
        t = np.repeat([0, 1], per_class)
        p = _tiles_of(rng, t, a, b)
        rows += [{"well": f"W{w}", "class": c, "n": int((t == c).sum()),
                  "mean_probability": np.round(p[t == c].mean(axis=0), 6).tolist()} for c in (0, 1)]
        probs.append(p)
        truth.append(t)
    p, t = np.concatenate(probs), np.concatenate(truth)
    return {"mean_probability": [np.round(p[t == c].mean(axis=0), 6).tolist() for c in (0, 1)],
            "n_per_class": [int((t == c).sum()) for c in (0, 1)], "per_well": rows}


def _well_of_its_own(rng, fraction: float, varies: bool):
    """A test well as ``_well`` draws it, but read by a model whose confusions are this well's own."""
    a, b = _confusion(rng, varies)
    local = rng.beta(fraction * 20, (1 - fraction) * 20, 30)
    cluster = np.repeat(np.arange(30), 16)
    truth = (rng.random(len(cluster)) < local[cluster]).astype(int)
    probs = _tiles_of(rng, truth, a, b)
    return probs, _labels(probs), cluster, truth


def _without_wells(block: dict) -> dict:
    return {key: value for key, value in block.items() if key != "per_well"}


def _coverage_and_width(varies: bool, seed: int, per_fraction: int):
    """Over wells (a fresh 12-well calibration each): coverage and mean width with and without the
    per-well rows."""
    rng = np.random.default_rng(seed)
    covered, widths = {"wells": 0, "pooled": 0}, {"wells": 0.0, "pooled": 0.0}
    n = 0
    for fraction in (0.05, 0.3, 0.6, 0.9):
        for _ in range(per_fraction):
            block = _calibration_wells(rng, varies)
            probs, labels, clusters, truth = _well_of_its_own(rng, fraction, varies)
            new = _differentiated(probs, labels, clusters, block)
            old = _differentiated(probs, labels, clusters, _without_wells(block))
            assert new.estimate == pytest.approx(old.estimate)  # the point stays; only the interval widens
            assert new.low <= old.low + 1e-9 and new.high >= old.high - 1e-9
            for name, f in (("wells", new), ("pooled", old)):
                covered[name] += f.low <= truth.mean() <= f.high
                widths[name] += f.high - f.low
            n += 1
    return {k: v / n for k, v in covered.items()}, {k: v / n for k, v in widths.items()}, new.method


def test_wells_whose_confusions_vary_are_covered_when_the_block_has_per_well_rows():
    """Each well's model confusions drawn afresh (a around 0.85, sd 0.15; b around 0.06, sd 0.04),
    calibration from 12 such wells. The pooled M with only its binomial error (the interval before
    per-well rows) misses the truth in about half the wells; the prediction interval for a new well's
    confusions covers it in at least 90 %."""
    coverage, widths, method = _coverage_and_width(True, seed=31, per_fraction=75)
    assert coverage["wells"] >= 0.9, f"coverage {coverage['wells']:.3f} with the per-well rows"
    assert coverage["pooled"] < 0.85, f"the pooled M alone covered {coverage['pooled']:.3f}"
    assert "a new well's confusions are a draw" in method and "spread over 12 calibration wells" in method


def test_wells_that_share_their_confusions_barely_widen_the_interval():
    coverage, widths, _ = _coverage_and_width(False, seed=32, per_fraction=25)
    assert widths["wells"] <= 1.25 * widths["pooled"], widths
    assert coverage["wells"] >= 0.95


def test_the_t_quantile_matches_the_tables():
    assert student_t_quantile(1, 0.95) == pytest.approx(12.7062, abs=1e-3)
    assert student_t_quantile(2, 0.95) == pytest.approx(4.3027, abs=1e-3)
    assert student_t_quantile(11, 0.95) == pytest.approx(2.2010, abs=1e-3)
    assert student_t_quantile(30, 0.99) == pytest.approx(2.7500, abs=1e-3)


def test_a_class_seen_in_too_few_wells_spans_every_wells_range_and_says_so():
    rng = np.random.default_rng(33)
    block = _calibration_wells(rng, True)
    few = [r for r in block["per_well"] if r["class"] == 0]
    few += [r for r in block["per_well"] if r["class"] == 1][:MIN_WELLS - 1]
    block = {**block, "per_well": few}
    probs, labels, clusters, _ = _well_of_its_own(rng, 0.3, True)
    f = _differentiated(probs, labels, clusters, block)
    assert f.kind == PACC and "could not be estimated for this class" in f.method
    assert f"{MIN_WELLS - 1} calibration well(s)" in f.method
    # a spans every own-class value of any calibration well: the clean class's wells put ~0.94 on theirs
    own = [r["mean_probability"][r["class"]] for r in few]
    a_low, a_high = (float(x) for x in f.method.split("a in [")[1].split("]")[0].split(", "))
    assert a_low <= min(own) + 1e-3 and a_high >= max(own) - 1e-3
    pooled = _differentiated(probs, labels, clusters, _without_wells(block))
    assert f.high - f.low > pooled.high - pooled.low
    # the other class's b leans on the thin row: it spans every other-class value, and says so
    undifferentiated = estimate_fractions(probs, labels, clusters, block, CONFIDENCE, classes=CLASSES)[0]
    assert "spread over 12 calibration wells" in undifferentiated.method
    assert f"b: 1 of the other classes with < {MIN_WELLS} wells" in undifferentiated.method


def test_without_a_usable_calibration_well_only_the_sampling_error_is_left():
    rng = np.random.default_rng(34)
    block = _calibration_wells(rng, True)
    thin = {**block, "per_well": [{**r, "n": MIN_WELL_TILES - 1} for r in block["per_well"]]}
    probs, labels, clusters, _ = _well_of_its_own(rng, 0.3, True)
    f = _differentiated(probs, labels, clusters, thin)
    old = _differentiated(probs, labels, clusters, _without_wells(block))
    assert "between-well variation could not be estimated" in f.method
    assert (f.low, f.high) == pytest.approx((old.low, old.high))


def _per_well_row(**change):
    return {"well": "A1", "class": 1, "n": 40, "mean_probability": [0.2, 0.8], **change}


@pytest.mark.parametrize("per_well, says", [
    ({"A1": [0.2, 0.8]}, "per_well must be a list"),
    ([[0.2, 0.8]], "per_well[0] must be a mapping"),
    ([{"well": "A1", "class": 1, "n": 40}], "per_well[0] lacks mean_probability"),
    ([_per_well_row(well="")], "per_well[0].well must name"),
    ([_per_well_row(**{"class": 2})], "per_well[0].class must be the true class's index, 0 to 1"),
    ([_per_well_row(**{"class": "differentiated"})], "per_well[0].class"),
    ([_per_well_row(n=0)], "per_well[0].n must count"),
    ([_per_well_row(n=12.5)], "per_well[0].n must count"),
    ([_per_well_row(mean_probability=[0.2, 0.3, 0.5])], "per_well[0].mean_probability must be 2 numbers"),
    ([_per_well_row(mean_probability=[1.3, -0.3])], "per_well[0].mean_probability holds probabilities"),
    ([_per_well_row(mean_probability=[0.5, 0.8])], "per_well[0].mean_probability sums to 1.300"),
    ([_per_well_row(), _per_well_row(n=20)], "per_well[1]: a second row for well 'A1' and class 1"),
    ([_per_well_row(n=150), _per_well_row(well="A2", n=150)],
     "rows of class 1 count 300 tiles, more than n_per_class[1] = 200"),
])
def test_a_malformed_per_well_block_is_named(per_well, says, tmp_path):
    block = {"mean_probability": [[0.9, 0.1], [0.2, 0.8]], "n_per_class": [500, 200], "per_well": per_well}
    assert says in quantification_problem(block, 2)
    path = tmp_path / "quantification.json"
    path.write_text(json.dumps({"tasks": {"differentiation": block}}))
    with pytest.raises(ConfigError, match=r"quantification.json: tasks.differentiation: quantification.per_well"):
        load_quantification(path, {"differentiation": CLASSES})


def test_a_block_with_well_formed_per_well_rows_loads(tmp_path):
    block = {"mean_probability": [[0.9, 0.1], [0.2, 0.8]], "n_per_class": [500, 200],
             "per_well": [_per_well_row(), _per_well_row(well="A2"), _per_well_row(well="A2", **{"class": 0},
                                                                                      mean_probability=[0.9, 0.1])]}
    path = tmp_path / "quantification.json"
    path.write_text(json.dumps({"tasks": {"differentiation": block}}))
    assert load_quantification(path, {"differentiation": CLASSES})["differentiation"]["per_well"] == block["per_well"]
    older = {"mean_probability": block["mean_probability"], "n_per_class": block["n_per_class"], "per_well": None}
    assert quantification_problem(older, 2) is None  # the key is optional
