"""Temperature scaling and the figures that say whether probabilities can be taken at their word.

One temperature per task, fitted by minimising the negative log-likelihood on calibration data
(images of groups the model never trained on and that are not the test split): Guo et al. 2017,
"On calibration of modern neural networks". The graph applies it as softmax(logits / T).

Inputs are per-view log-probabilities, shape (V, N, C) (or (N, C) for one view): the calibrated
probability of an image is the mean over its V views of softmax(log_probs / T), which is exactly
what the exported graph computes, because log-softmax differs from the logits only by a constant
per row and softmax ignores that constant (also after dividing by T). So a temperature can be
fitted from probabilities alone, for a plain pass and for dihedral TTA alike.

Figures (Guo et al.; Brier 1950): ECE over 15 equal-width bins of the top-class probability, NLL
and the multi-class Brier score (sum over classes of squared error, mean over images).
"""

from __future__ import annotations

import numpy as np

from mscvision.core.tasks import IGNORE_INDEX

ECE_BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)
_EPS = 1e-12


def _views(log_probs: np.ndarray) -> np.ndarray:
    values = np.asarray(log_probs, dtype=np.float64)
    if values.ndim == 2:
        values = values[None]
    if values.ndim != 3:
        raise ValueError(f"log-probabilities of shape {values.shape}: expected (N, C) or (views, N, C)")
    return values


def _known(labels: np.ndarray) -> np.ndarray:
    return np.asarray(labels) != IGNORE_INDEX


def apply_temperature(log_probs: np.ndarray, temperature: float) -> np.ndarray:
    """The calibrated probabilities (N, C): the mean over views of softmax(log_probs / T)."""
    scaled = _views(log_probs) / float(temperature)
    scaled -= scaled.max(axis=2, keepdims=True)
    p = np.exp(scaled)
    p /= p.sum(axis=2, keepdims=True)
    return p.mean(axis=0)


def _nll(log_probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    p = apply_temperature(log_probs, temperature)
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(labels)), labels], _EPS))))


def fit_temperature(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in ``TEMPERATURE_RANGE`` minimising the NLL of the known labels.

    A coarse grid over log T (the NLL of a multi-view mean need not be convex in T) and then a
    golden-section refinement around the best grid point. Raises ``ValueError`` with no known label.
    """
    views = _views(log_probs)
    keep = _known(labels)
    if not keep.any():
        raise ValueError("no calibration image has a known label: a temperature cannot be fitted")
    views, y = views[:, keep], np.asarray(labels)[keep].astype(int)
    grid = np.linspace(np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1]), 61)
    losses = [_nll(views, y, np.exp(g)) for g in grid]
    best = int(np.argmin(losses))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (np.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = _nll(views, y, np.exp(a)), _nll(views, y, np.exp(b))
    for _ in range(40):
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = _nll(views, y, np.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = _nll(views, y, np.exp(b))
    return float(np.exp((low + high) / 2))


def calibration_figures(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """ECE (``bins`` equal-width bins of the top-class probability), NLL and Brier of known labels."""
    probs = np.asarray(probs, dtype=np.float64)
    keep = _known(labels)
    p, y = probs[keep], np.asarray(labels)[keep].astype(int)
    n = len(y)
    if n == 0:
        return {"ece": None, "nll": None, "brier": None, "n": 0}
    onehot = np.eye(p.shape[1])[y]
    ece = sum(b["count"] / n * abs(b["accuracy"] - b["confidence"])
              for b in reliability_bins(p, y, bins) if b["count"])
    return {"ece": float(ece), "nll": float(-np.mean(np.log(np.maximum(p[np.arange(n), y], _EPS)))),
            "brier": float(np.mean(np.sum((p - onehot) ** 2, axis=1))), "n": int(n)}


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width bin of the top-class probability: its edges, image count, mean confidence
    and accuracy (None when empty). The last bin includes 1.0."""
    probs = np.asarray(probs, dtype=np.float64)
    keep = _known(labels)
    p, y = probs[keep], np.asarray(labels)[keep].astype(int)
    confidence, correct = p.max(axis=1), p.argmax(axis=1) == y
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        out.append({"lower": b / bins, "upper": (b + 1) / bins, "count": count,
                    "confidence": float(confidence[inside].mean()) if count else None,
                    "accuracy": float(correct[inside].mean()) if count else None})
    return out
