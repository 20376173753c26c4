"""Group-aware splits and the shared metrics."""

import numpy as np
import pytest

from mscvision.core.errors import DataError
from mscvision.core.metrics import classification_metrics
from mscvision.core.splits import check_groups_disjoint, stratified_group_folds, train_val_test_split


def _data(seed=0, n=600, groups=30):
    rng = np.random.default_rng(seed)
    group = rng.integers(0, groups, n)
    label = (rng.random(n) < 0.2 + 0.6 * (group % 3 == 0)).astype(int) + 2 * (rng.random(n) < 0.1)
    return label, group


def test_every_group_on_one_side_of_every_fold():
    label, group = _data()
    folds = stratified_group_folds(label, group, 5, seed=1)
    for g in np.unique(group):
        assert len(np.unique(folds[group == g])) == 1
    assert set(folds) == set(range(5))


def test_folds_are_stratified_and_reproducible():
    label, group = _data(groups=60)
    folds = stratified_group_folds(label, group, 5, seed=3)
    np.testing.assert_array_equal(folds, stratified_group_folds(label, group, 5, seed=3))
    overall = np.bincount(label) / len(label)
    for k in range(5):
        share = np.bincount(label[folds == k], minlength=len(overall)) / (folds == k).sum()
        assert np.abs(share - overall).max() < 0.12


def test_train_val_test_split_keeps_groups_whole():
    label, group = _data()
    split = train_val_test_split(label, group, 0.15, 0.2, seed=0)
    check_groups_disjoint(group, split)
    assert {"train", "val", "test"} == set(split)
    assert 0.1 < np.mean(split == "test") < 0.3


def test_straddling_group_is_rejected():
    with pytest.raises(DataError, match="straddles"):
        check_groups_disjoint(np.array(["a", "a", "b"]), np.array(["train", "test", "test"]))


def test_metrics_match_scikit_learn():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    p[:150] = y[:150]
    y_masked = y.copy()
    y_masked[:10] = -1  # unknown labels are left out
    m = classification_metrics(y_masked, p, ["a", "b", "c", "d"])
    keep = y_masked >= 0
    assert m["n"] == keep.sum()
    assert m["balanced_accuracy"] == pytest.approx(sklearn.balanced_accuracy_score(y[keep], p[keep]))
    assert m["macro_f1"] == pytest.approx(sklearn.f1_score(y[keep], p[keep], average="macro"))
    assert m["weighted_f1"] == pytest.approx(sklearn.f1_score(y[keep], p[keep], average="weighted"))


def test_near_duplicates_across_the_split_are_found():
    from mscvision.core.duplicates import average_hash, cross_split_near_duplicates

    rng = np.random.default_rng(0)
    images = [rng.random((32, 32, 1)).astype(np.float32) for _ in range(6)]
    images.append(np.clip(images[0] + rng.normal(0, 0.01, (32, 32, 1)), 0, 1).astype(np.float32))  # noisy copy of 0
    hashes = np.stack([average_hash(im) for im in images])
    split = np.array(["train", "train", "train", "test", "test", "val", "test"])
    pairs = cross_split_near_duplicates(hashes, split)
    assert [(a, b) for a, b, _ in pairs] == [(0, 6)]
