"""The paired group bootstrap of a difference between two models (core/intervals.py, for `compare`)."""

from __future__ import annotations

import numpy as np

from mscvision.core.intervals import group_bootstrap, paired_group_bootstrap

CLASSES = ("a", "b")


def data(seed: int = 0, groups: int = 10, per_group: int = 20):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, groups * per_group)
    g = np.repeat([f"g{i}" for i in range(groups)], per_group)
    hard = np.isin(g, ["g0", "g1", "g2"])  # groups where both models err often: what pairing cancels
    base = np.where(rng.random(len(y)) < np.where(hard, 0.45, 0.1), 1 - y, y)
    return y, g, base


def test_identical_predictions_differ_by_exactly_zero():
    y, g, base = data()
    result = paired_group_bootstrap(y, base, base, g, CLASSES, n_boot=200)
    assert result["difference"]["balanced_accuracy"] == 0
    assert result["intervals"]["balanced_accuracy"] == [0.0, 0.0] and result["b_better"]["macro_f1"] == 0


def test_a_model_that_fixes_errors_everywhere_is_better_in_every_draw():
    y, g, base = data()
    better = base.copy()
    wrong = np.flatnonzero(base != y)
    better[wrong[::2]] = y[wrong[::2]]  # half of the errors fixed, in every group
    result = paired_group_bootstrap(y, base, better, g, CLASSES, n_boot=300)
    low, high = result["intervals"]["balanced_accuracy"]
    assert 0 < low <= result["difference"]["balanced_accuracy"] <= high
    assert result["b_better"]["balanced_accuracy"] == 1.0


def test_pairing_gives_a_narrower_interval_than_two_separate_ones():
    y, g, base = data(seed=3)
    rng = np.random.default_rng(7)
    other = np.where(rng.random(len(y)) < 0.05, 1 - base, base)  # shares almost all of base's errors
    paired = paired_group_bootstrap(y, base, other, g, CLASSES, n_boot=400)
    low, high = paired["intervals"]["balanced_accuracy"]
    separate_a = group_bootstrap(y, base, g, CLASSES, n_boot=400)["intervals"]["balanced_accuracy"]
    separate_b = group_bootstrap(y, other, g, CLASSES, n_boot=400, seed=1)["intervals"]["balanced_accuracy"]
    # the difference's range if the two intervals were independent: far wider than the paired one
    assert high - low < 0.5 * ((separate_a[1] - separate_a[0]) + (separate_b[1] - separate_b[0]))


def test_one_group_gives_no_interval_but_the_difference():
    y, _, base = data()
    result = paired_group_bootstrap(y, base, 1 - base, np.zeros(len(y)), CLASSES)
    assert result["intervals"] is None and "at least 2" in result["reason"]
    accuracy = float((base == y).mean())
    assert abs(result["difference"]["accuracy"] - ((1 - accuracy) - accuracy)) < 1e-12
