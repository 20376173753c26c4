"""Learned out-of-distribution scores on a model's penultimate features (numpy only).

An exported model computes its score itself, inside the graph (``export/ood.py`` appends it as the
output ``ood.score``, float32 (N,), higher = more unusual). These are the reference definitions of
the same numbers, from the graph's ``features`` output and the statistics stored in the file, so a
station or a test can recompute what the graph says. Each keeps the graph's arithmetic order.
"""

from __future__ import annotations

import numpy as np

# torch.nn.functional.normalize's default floor on the norm: an all-zero feature vector stays zero
# (score 1 for kNN) instead of becoming NaN
NORM_EPS = 1e-12


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (floored at ``NORM_EPS``), float32."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(NORM_EPS))


def knn_score(features: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """Deep nearest neighbours (Sun et al. 2022): 1 − the k-th largest cosine similarity between each
    row of ``features`` (N, D) and the rows of ``bank`` (B, D), already L2-normalised; range [0, 2]."""
    if not 1 <= k <= len(bank):
        raise ValueError(f"k={k} must be between 1 and the bank size {len(bank)}")
    similarity = l2_normalise(features) @ np.asarray(bank, np.float32).T
    kth = -np.partition(-similarity, k - 1, axis=1)[:, k - 1]
    return (np.float32(1.0) - kth).astype(np.float32)


def score_spread(scores: np.ndarray) -> float:
    """The 5th to 95th percentile range of in-distribution scores: the scale a threshold lives on
    (kNN scores of one model spread over hundredths, Mahalanobis distances over units)."""
    low, high = np.percentile(np.asarray(scores, np.float64), [5, 95])
    return max(float(high - low), 1e-12)


def mahalanobis_score(features: np.ndarray, whitened_means: np.ndarray, whitening: np.ndarray) -> np.ndarray:
    """The smallest Mahalanobis distance to a class mean under one shared covariance (Lee et al. 2018).

    ``whitening`` W (D, D) is a square root of the precision matrix (P = W Wᵀ) and ``whitened_means``
    the class means times W (C, D): d_c(f)² = (f − μ_c)ᵀ P (f − μ_c) = ‖f W − μ_c W‖². Projecting
    once and subtracting keeps float32 exact enough; expanding the quadratic form would cancel."""
    z = np.asarray(features, np.float32) @ np.asarray(whitening, np.float32)
    squared = ((z[:, None, :] - np.asarray(whitened_means, np.float32)[None]) ** 2).sum(axis=2)
    return np.sqrt(squared.min(axis=1)).astype(np.float32)


def energy_score(logits: np.ndarray) -> np.ndarray:
    """The negative free energy of the logits (Liu et al. 2020), -logsumexp over the classes, written
    as the max plus the log of the shifted exponentials' sum: higher = less mass = more unusual."""
    z = np.asarray(logits, np.float32)
    top = z.max(axis=1)
    return -(top + np.log(np.exp(z - top[:, None]).sum(axis=1))).astype(np.float32)


def mahalanobis_energy_score(features: np.ndarray, whitened_means: np.ndarray, whitening: np.ndarray,
                             head_weight_t: np.ndarray, head_bias: np.ndarray, standardise: np.ndarray) -> np.ndarray:
    """The Mahalanobis distance (``mahalanobis_score``) and the energy of the first task's logits
    (``features @ head_weight_t + head_bias``: the graph's own linear head), each standardised by the
    training images' mean and standard deviation (``standardise`` = [distance mean, distance sd,
    energy mean, energy sd]), summed: the feature-space distance sees images far from every class,
    the energy images the classifier has no class for (near-OOD: a phenotype absent from training)."""
    distance = mahalanobis_score(features, whitened_means, whitening)
    logits = (np.asarray(features, np.float32) @ np.asarray(head_weight_t, np.float32)
              + np.asarray(head_bias, np.float32))
    s = np.asarray(standardise, np.float32)
    return ((distance - s[0]) / s[1] + (energy_score(logits) - s[2]) / s[3]).astype(np.float32)
