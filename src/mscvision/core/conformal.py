"""Conformal p-values and the one combined out-of-distribution decision (issue 16 item 3).

A score is oriented so that higher = more unusual. Its calibration scores come from in-distribution
images that were never trained on (held-out groups). For a new image whose score is exchangeable
with theirs, the split-conformal p-value

    p(s) = (1 + #{calibration scores >= s}) / (n + 1)

satisfies P(p <= a) <= a for every a: flagging at p <= a flags an in-distribution image with
probability at most a, whatever the score's distribution (ties only make it more conservative).

One alpha is shared by all the scores of a model (``ALPHA_SHARING``): a weighted Bonferroni split.
Score k gets a share w_k (the shares sum to at most 1) and fires when p_k <= w_k * alpha; by the
union bound an in-distribution image is flagged with probability <= sum(w_k) * alpha <= alpha,
however the scores depend on each other. Chosen over a min-p combination with its own calibration
because it needs no second held-out set, holds under any dependence, and every reason that fires
stands on its own (that check, at its own level). Its cost: when the checks are correlated the
in-distribution flag rate falls below alpha (it is an upper bound, not an equality).
Deterministic rules (another bit depth, another pixel size) never fire on in-distribution images,
so they spend none of alpha.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

DEFAULT_ALPHA = 0.05
LEARNED_SHARE = 0.5  # of alpha, to the learned score when the model has one
ALPHA_SHARING = ("bonferroni: the learned score (when present) gets alpha/2 and the image checks share the rest "
                 "equally (all of alpha when there is no learned score); a score fires when its conformal "
                 "p-value <= its share of alpha, so an in-distribution image is flagged with probability <= alpha; "
                 "deterministic rules (bit depth, pixel size) spend none")


@dataclass(frozen=True)
class GateDecision:
    flagged: bool
    reasons: list[str] = field(default_factory=list)  # one per score that fired, in the order given
    p_values: dict[str, float] = field(default_factory=dict)  # every score's p-value, fired or not
    # every score as judged (higher = more unusual; NaN: not measured) and the deterministic rules'
    # reasons (also in ``reasons``), for evaluation's per-score figures (runtime/ood_evaluation.py)
    scores: dict[str, float] = field(default_factory=dict)
    rules: list[str] = field(default_factory=list)

    @property
    def smallest_p(self) -> float | None:
        return min(self.p_values.values()) if self.p_values else None


def p_value(score: float | np.ndarray, calibration_scores: Sequence[float] | np.ndarray) -> float | np.ndarray:
    """Conformal p-value(s) of ``score`` (a number or an array) against the calibration scores.

    A NaN score counts as more unusual than every calibration score (the smallest p-value): a
    measure that could not be taken is no evidence that the image is normal. With no calibration
    scores the p-value is 1: nothing can be flagged without calibration."""
    return p_value_sorted(score, np.sort(np.asarray(calibration_scores, dtype=np.float64).ravel()))


def p_value_sorted(score: float | np.ndarray, sorted_calibration: np.ndarray) -> float | np.ndarray:
    """``p_value`` against calibration scores already sorted ascending: a station sorts them once
    per model, not once per image."""
    n = len(sorted_calibration)
    if np.ndim(score) == 0:  # one image: bisect, without numpy's per-call overhead
        s = math.inf if math.isnan(score) else float(score)
        return (1.0 + n - bisect.bisect_left(sorted_calibration, s)) / (n + 1.0)
    scores = np.asarray(score, dtype=np.float64)
    worst = np.where(np.isnan(scores), np.inf, scores)
    return (1.0 + n - np.searchsorted(sorted_calibration, worst, side="left")) / (n + 1.0)


def smallest_p(n_calibration: int) -> float:
    """The smallest p-value ``n_calibration`` scores can give: a level below it can never fire."""
    return 1.0 / (n_calibration + 1)


def calibration_needed(level: float) -> int:
    """Calibration scores needed before a score can fire at ``level`` (1 / (n + 1) <= level)."""
    return max(0, math.ceil(1.0 / level - 1.0 - 1e-9))


def bonferroni_shares(image_checks: Sequence[str], learned: str | None = None) -> dict[str, float]:
    """The shares of alpha (``ALPHA_SHARING``): ``learned`` gets LEARNED_SHARE when given, the image
    checks split the rest equally. The shares sum to exactly 1."""
    shares = {learned: LEARNED_SHARE} if learned else {}
    rest = 1.0 - sum(shares.values())
    shares.update({name: rest / len(image_checks) for name in image_checks} if image_checks else {})
    if not image_checks and learned:
        shares[learned] = 1.0
    return shares


def combine(p_values: Mapping[str, float], alpha: float, shares: Mapping[str, float],
            describe: Callable[[str, float, float], str] | None = None) -> GateDecision:
    """One decision over every score: flagged when any p_k <= shares[k] * alpha.

    ``describe(name, p, level)`` words a reason; by default "NAME: p=... <= level ...". A score
    without a share is refused (it would spend alpha nobody accounted for), as are shares summing
    to more than 1 (the guarantee would no longer hold)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha={alpha!r} must be in (0, 1)")
    missing = sorted(set(p_values) - set(shares))
    if missing:
        raise ValueError(f"score(s) {missing} have no share of alpha")
    total = sum(shares[name] for name in p_values)
    if total > 1.0 + 1e-9 or any(shares[name] < 0 for name in p_values):
        raise ValueError(f"shares of alpha sum to {total:g} (must be non-negative and sum to at most 1)")
    reasons = []
    for name, p in p_values.items():
        level = shares[name] * alpha
        if p <= level:
            reasons.append(describe(name, p, level) if describe else f"{name}: p={p:.3g} <= {level:.3g}")
    return GateDecision(bool(reasons), reasons, {name: float(p) for name, p in p_values.items()})
