"""AUROC (Mann-Whitney, ties counted one half) and FPR at 95% TPR on hand-computed cases (issue 16 item 4)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mscvision.core.ood_metrics import auroc, flag_rate, fpr_at_tpr, separation


def test_auroc_counts_a_tie_as_one_half():
    # OOD 2 beats in-distribution 0 and 1, ties 2, loses to 3: 2.5 of 4; OOD 4 and 5 beat all four
    assert auroc([0, 1, 2, 3], [2, 4, 5]) == pytest.approx(10.5 / 12)


def test_auroc_of_all_ties_is_chance_and_of_a_clean_split_is_one():
    assert auroc([1, 1, 1], [1, 1]) == pytest.approx(0.5)
    assert auroc([0, 1], [2, 3]) == 1.0
    assert auroc([2, 3], [0, 1]) == 0.0


def test_a_nan_score_is_the_most_unusual():
    # NaN beats 0 and 5; 1 beats 0, loses to 5: 3 of 4
    assert auroc([0, 5], [math.nan, 1]) == pytest.approx(0.75)
    assert fpr_at_tpr([0, 5], [math.nan, math.nan]) == 0.0


def test_auroc_equals_the_pairwise_count_with_many_ties():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 6, 300), rng.integers(2, 9, 200)
    pairs = (b[:, None] > a[None, :]).mean() + 0.5 * (b[:, None] == a[None, :]).mean()
    assert auroc(a, b) == pytest.approx(pairs, abs=1e-12)


def test_fpr_at_95_tpr_uses_the_highest_threshold_that_catches_95_percent():
    # 3 OOD images: 95% needs all 3, so the threshold is the lowest OOD score, 2; in-distribution 2 and 3 pass it
    assert fpr_at_tpr([0, 1, 2, 3], [2, 4, 5]) == 0.5
    # 20 OOD images 1..20: 19 must be caught (0.95 * 20, not 20 from float rounding), threshold 2
    assert fpr_at_tpr([0.5, 1.5, 2.0, 18.5], np.arange(1, 21)) == 0.5
    assert fpr_at_tpr([0.5, 1.5, 2.0, 18.5], np.arange(1, 21), tpr=1.0) == 0.75  # threshold 1: all but 0.5
    assert fpr_at_tpr([0, 1], [2, 3]) == 0.0


def test_ties_at_the_threshold_are_flagged_together():
    # every OOD image scores 1, as do half the in-distribution ones: catching them flags those too
    assert fpr_at_tpr([0, 0, 1, 1], [1, 1, 1, 1]) == 0.5


def test_empty_sets_have_no_figure_and_a_bad_tpr_is_refused():
    assert auroc([], [1.0]) is None and fpr_at_tpr([1.0], []) is None and flag_rate([]) is None
    with pytest.raises(ValueError):
        fpr_at_tpr([0], [1], tpr=0.0)


def test_separation_and_flag_rate():
    assert separation([0, 1, 2, 3], [2, 4, 5]) == {"auroc": pytest.approx(0.875), "fpr_at_95_tpr": 0.5}
    assert flag_rate([True, False, False, True]) == 0.5
