"""How well a score separates in-distribution images from an out-of-distribution source (issue 16
item 4): AUROC and the false-positive rate at 95% true-positive rate, numpy only.

Conventions (as OpenOOD v1.5's evaluator): the OOD images are the positives and every score is
oriented so that higher = more unusual. A NaN score counts as the most unusual (+inf), as the gate
treats a measure that could not be taken (core/conformal.py).

- ``auroc``: the probability that a random OOD image scores above a random in-distribution one,
  ties counting one half: the Mann-Whitney U statistic over n_ood * n_in, from mid-ranks. Ties
  matter here: conformal p-values and clipped-pixel fractions take few distinct values, and a rank
  formula without mid-ranks would credit (or blame) every tie to one side.
- ``fpr_at_tpr``: flag every image whose score is >= t, with t the largest threshold that still
  flags at least ``tpr`` of the OOD images; the share of in-distribution images it flags too. It
  answers "to catch 95% of this source, what share of good images goes to review?".
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

DEFAULT_TPR = 0.95


def _scores(values: Sequence[float] | np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).ravel()
    return np.where(np.isnan(x), np.inf, x)


def auroc(in_scores: Sequence[float] | np.ndarray, ood_scores: Sequence[float] | np.ndarray) -> float | None:
    """P(ood score > in score) + P(equal) / 2; None when either set is empty."""
    a, b = _scores(in_scores), _scores(ood_scores)
    if not len(a) or not len(b):
        return None
    _, inverse, counts = np.unique(np.concatenate([a, b]), return_inverse=True, return_counts=True)
    mid_ranks = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based rank of each distinct value, ties averaged
    rank_sum = float(mid_ranks[inverse[len(a):]].sum())
    u = rank_sum - len(b) * (len(b) + 1) / 2.0
    return u / (len(a) * len(b))


def fpr_at_tpr(in_scores: Sequence[float] | np.ndarray, ood_scores: Sequence[float] | np.ndarray,
               tpr: float = DEFAULT_TPR) -> float | None:
    """Share of in-distribution images with a score >= the largest threshold that flags >= ``tpr`` of
    the OOD images (see the module docstring); None when either set is empty."""
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr={tpr!r} must be in (0, 1]")
    a, b = _scores(in_scores), _scores(ood_scores)
    if not len(a) or not len(b):
        return None
    needed = max(1, math.ceil(tpr * len(b) - 1e-9))  # OOD images that must be flagged
    threshold = np.sort(b)[::-1][needed - 1]  # the needed-th highest OOD score
    return float(np.mean(a >= threshold))


def flag_rate(flags: Sequence[bool] | np.ndarray) -> float | None:
    """Share flagged; None for no images."""
    x = np.asarray(flags, dtype=bool).ravel()
    return float(x.mean()) if len(x) else None


def separation(in_scores: Sequence[float] | np.ndarray, ood_scores: Sequence[float] | np.ndarray,
               tpr: float = DEFAULT_TPR) -> dict[str, float | None]:
    """Both figures in one block: ``{"auroc": ..., "fpr_at_95_tpr": ...}`` (the key names ``tpr``)."""
    return {"auroc": auroc(in_scores, ood_scores),
            f"fpr_at_{round(100 * tpr):d}_tpr": fpr_at_tpr(in_scores, ood_scores, tpr)}
