"""Group bootstrap intervals (core/intervals.py): groups, not images, are the independent units."""

from __future__ import annotations

import numpy as np
import pytest

from mscvision.core.intervals import group_bootstrap
from mscvision.core.metrics import classification_metrics, metrics_from_confusion
from mscvision.core.tasks import IGNORE_INDEX

CLASSES = ("a", "b")


def clustered_predictions(n_groups: int = 10, per_group: int = 40):
    """Errors that come in clusters, as tiles of one bad well do: each group has its own error rate."""
    rng = np.random.default_rng(1)
    rates = np.linspace(0.0, 0.45, n_groups)
    y_true = rng.integers(0, 2, n_groups * per_group)
    wrong = np.concatenate([rng.random(per_group) < r for r in rates])
    y_pred = np.where(wrong, 1 - y_true, y_true)
    groups = np.repeat(np.arange(n_groups), per_group)
    return y_true, y_pred, groups


def width(result: dict, figure: str) -> float:
    low, high = result["intervals"][figure]
    return high - low


def test_intervals_widen_when_the_same_images_are_packed_into_fewer_groups():
    y_true, y_pred, groups = clustered_predictions()
    as_images = group_bootstrap(y_true, y_pred, np.arange(len(y_true)), CLASSES, n_boot=500)
    as_groups = group_bootstrap(y_true, y_pred, groups, CLASSES, n_boot=500)
    assert as_images["n_groups"] == len(y_true) and as_groups["n_groups"] == 10
    for figure in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1"):
        assert width(as_groups, figure) > 1.5 * width(as_images, figure), figure
    def recall_width(result: dict) -> float:
        low, high = result["intervals"]["per_class"]["a"]["recall"]
        return high - low

    assert recall_width(as_groups) > recall_width(as_images)


def test_one_image_per_group_is_the_ordinary_bootstrap():
    """Accuracy 0.8 on 400 independent images: the 95% interval is about ±1.96·sqrt(0.8·0.2/400)."""
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, 400)
    y_pred = y_true.copy()
    y_pred[:80] = 1 - y_pred[:80]  # exactly 80 % right
    result = group_bootstrap(y_true, y_pred, np.arange(400), CLASSES, n_boot=2000)
    low, high = result["intervals"]["accuracy"]
    assert low < 0.8 < high
    assert high - low == pytest.approx(2 * 1.96 * np.sqrt(0.8 * 0.2 / 400), rel=0.15)


def test_the_bootstrap_is_reproducible_with_a_seed_and_varies_without_it():
    y_true, y_pred, groups = clustered_predictions()
    first = group_bootstrap(y_true, y_pred, groups, CLASSES, n_boot=200, seed=7)
    again = group_bootstrap(y_true, y_pred, groups, CLASSES, n_boot=200, seed=7)
    other = group_bootstrap(y_true, y_pred, groups, CLASSES, n_boot=200, seed=8)
    assert first == again
    assert first["intervals"] != other["intervals"]


def test_fewer_than_two_groups_gives_no_interval_and_says_why():
    y_true, y_pred, _ = clustered_predictions()
    result = group_bootstrap(y_true, y_pred, np.zeros(len(y_true)), CLASSES)
    assert result["intervals"] is None and result["n_groups"] == 1
    assert "at least 2" in result["reason"]
    # a second group whose images all have unknown labels does not count
    y_true = y_true.copy()
    groups = np.where(np.arange(len(y_true)) < 40, "g2", "g1")
    y_true[:40] = IGNORE_INDEX
    assert group_bootstrap(y_true, y_pred, groups, CLASSES)["n_groups"] == 1


def test_the_intervals_are_of_the_figures_classification_metrics_reports():
    y_true, y_pred, groups = clustered_predictions()
    point = classification_metrics(y_true, y_pred, CLASSES)
    assert metrics_from_confusion(np.array(point["confusion_matrix"]), CLASSES) == point
    result = group_bootstrap(y_true, y_pred, groups, CLASSES, n_boot=500)
    for figure in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1"):
        low, high = result["intervals"][figure]
        assert low <= point[figure] <= high, figure


def test_a_class_absent_from_some_draws_is_scored_only_where_it_is_defined():
    # class "b" occurs in one group of three: many draws lack it; its recall must not be dragged to 0 there
    y_true = np.array([0] * 20 + [0] * 20 + [1] * 10)
    y_pred = y_true.copy()
    groups = np.repeat(["g1", "g2", "g3"], [20, 20, 10])
    result = group_bootstrap(y_true, y_pred, groups, CLASSES, n_boot=300, seed=0)
    draws = result["intervals"]["per_class_draws"]["b"]["recall"]
    assert 0 < draws < 300
    assert result["intervals"]["per_class"]["b"]["recall"] == [1.0, 1.0]
