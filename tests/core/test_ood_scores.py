"""The numpy references of the learned OOD scores (core/ood_scores.py) on hand-made features: what
the exported graph's ``ood.score`` must equal (tests/export/test_export_ood.py checks the graph)."""

from __future__ import annotations

import numpy as np
import pytest

from mscvision.core.ood_scores import (energy_score, knn_score, l2_normalise, mahalanobis_energy_score,
                                      mahalanobis_score, score_spread)


def test_knn_score_is_one_minus_the_kth_cosine_similarity():
    bank = l2_normalise(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    features = np.array([[2.0, 0.0], [0.0, 0.0]], np.float32)
    # (1, 0): similarities 1, 0, 0.707 → the 2nd largest is 0.707; a zero vector has similarity 0 to all
    np.testing.assert_allclose(knn_score(features, bank, 2), [1 - np.sqrt(0.5), 1.0], rtol=1e-6)
    np.testing.assert_allclose(knn_score(features, bank, 1), [0.0, 1.0], atol=1e-6)
    with pytest.raises(ValueError, match="between 1 and the bank size 3"):
        knn_score(features, bank, 4)


def test_mahalanobis_score_is_the_distance_to_the_nearest_mean():
    means = np.array([[0.0, 0.0], [3.0, 4.0]], np.float32)
    # identity precision: the plain Euclidean distance to the nearest mean
    np.testing.assert_allclose(mahalanobis_score(np.array([[3.0, 4.0], [0.6, 0.8]]), means, np.eye(2)), [0.0, 1.0],
                               atol=1e-6)
    # precision diag(4, 1) = W Wᵀ with W = diag(2, 1): (1, 0) is 2 from the origin, (0, 1) only 1
    whitening = np.diag([2.0, 1.0])
    np.testing.assert_allclose(mahalanobis_score(np.array([[1.0, 0.0], [0.0, 1.0]]), means @ whitening, whitening),
                               [2.0, 1.0], rtol=1e-6)


def test_score_spread_is_the_5_to_95_percentile_range():
    assert score_spread(np.arange(101.0)) == pytest.approx(90.0)
    assert score_spread(np.ones(10)) == pytest.approx(1e-12)  # never zero: tolerances are multiples of it


def test_energy_score_is_minus_logsumexp_and_stays_finite_for_large_logits():
    logits = np.array([[0.0, 0.0], [1000.0, 1000.0], [5.0, -5.0]], np.float32)
    expected = [-np.log(2.0), -(1000.0 + np.log(2.0)), -(5.0 + np.log1p(np.exp(-10.0)))]
    np.testing.assert_allclose(energy_score(logits), expected, rtol=1e-6)


def test_mahalanobis_energy_score_sums_the_two_standardised_scores():
    means = np.array([[0.0, 0.0], [3.0, 4.0]], np.float32)
    features = np.array([[0.6, 0.8], [3.0, 4.0]], np.float32)
    weight_t, bias = np.array([[1.0, -1.0], [0.0, 2.0]], np.float32), np.array([0.5, 0.0], np.float32)
    standardise = np.array([1.0, 2.0, -3.0, 0.5], np.float32)
    distance = mahalanobis_score(features, means, np.eye(2))  # 1 and 0
    energy = energy_score(features @ weight_t + bias)
    expected = (distance - 1.0) / 2.0 + (energy + 3.0) / 0.5
    np.testing.assert_allclose(mahalanobis_energy_score(features, means, np.eye(2), weight_t, bias, standardise),
                               expected, rtol=1e-6)
