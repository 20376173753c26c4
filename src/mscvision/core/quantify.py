"""Class fractions of a well or lot from per-tile probabilities, corrected for the model's own confusions,
with an interval that respects how tiles cluster.

The estimand (docs/architecture.md, issue 17): the fraction of usable tiles whose dominant state is a
class. Counting labels is biased: a model that errs on 5% of tiles reads a clean well as ~5%
differentiated. So the estimate is probabilistic adjusted classify-and-count (PACC; Bella et al.
2010): the mean calibrated probability vector q of the tiles is what the model's val confusions M
(row = true class, column = mean calibrated probability; ``quantification.mean_probability``) predict
for the true fractions pi, q = M^T pi.

- point: pi-hat, least squares of q = M^T pi on the simplex (exact, by the supports of the simplex);
- per class c, the one-vs-rest map pi_c = (q_c - b_c) / (a_c - b_c), a_c = M[c, c] (how much
  probability a tile of class c puts on c), b_c = the mean of M[j, c] over the other classes j
  weighted by pi-hat (by the calibration counts when pi-hat gives them ~no mass), clipped to [0, 1].
  It is monotone in q_c, so it carries an interval for q_c into one for pi_c; when M fits q exactly it
  equals pi-hat_c. Below ``MIN_SEPARATION`` of a_c - b_c the model barely tells c from the rest and
  the map would amplify noise without bound: the class is *not adjustable* and the verdict layer
  sends its criteria to review (``unjudgeable_reason``).
- interval for q_c: two-sided Clopper-Pearson on the real-valued count q_c * n_eff of n_eff = n / deff
  (Kish's design effect of the per-tile probability of c over the tiles' clusters, ANOVA intra-cluster
  correlation, ``core/selective.py``). With fewer than ``MIN_CLUSTERS`` clusters the correlation
  cannot be estimated (a handful of cluster means can show no spread by chance), so each cluster
  counts as one observation: n_eff = number of clusters, the largest design effect there can be
  (rho = 1).
- the calibration's own sampling error: a_c and b_c are means over the calibration tiles
  (``n_per_class`` of each true class), so they are estimates too, and with a few dozen tiles of a
  class their error is as large as the well's. Each gets a Clopper-Pearson interval at the same
  confidence: a_c on the count a_c * n_c of n_c; b_c on b_c * n_b of n_b, n_b = 1 / sum_j(w_j^2 / n_j)
  the effective size of the weighted mean (w_j the weights above, normalised; exact for two classes).
  A calibration tile's probability lies in [0, 1], so its variance is at most mu (1 - mu) (Bhatia-Davis),
  that of a 0/1 count: the binomial interval is the conservative one the stored means and counts allow
  (the block keeps no spread of the probabilities; calibration tiles are taken as independent).
  The three are combined by Fieller's pivot with MOVER (Zou and Donner 2008, Stat Med 27): for a
  candidate pi, T(pi) = q_c - pi a_c - (1 - pi) b_c is zero in expectation and a linear combination of
  independent estimates, whose interval is T-hat minus / plus the square root of the summed squared
  distances from each estimate to its own interval's relevant end (q_c's lower end, a_c's and b_c's
  upper ends weighted pi and 1 - pi, for the lower limit; the mirror for the upper). pi is in the
  interval when that interval of T holds 0. Why this and not the alternatives: the errors add in
  quadrature, as independent errors do, where taking a_c and b_c at their interval ends together with
  q_c's (a Bonferroni box) adds them linearly and spends part of the 5 % on M even when M is exact, so
  it is wider than needed and changes the interval of a well-calibrated model; a parametric bootstrap
  over M would need a random seed and thousands of draws per class and well. This one is
  deterministic, keeps Clopper-Pearson's asymmetry near 0 and 1, and as n_c grows the a_c and b_c
  intervals shrink to points and it becomes exactly the map of q_c's interval. A block without
  ``n_per_class`` (no sizes to propagate) keeps M as known, and its method says so.
- never zero width: the ends are kept at least as far from 0 and from 1 as a count of zero among
  n_eff would put them (``_width_floor``), so an estimate clipped onto a bound keeps an interval.

No quantification (an older model): the raw mean of calibrated probabilities, method "unadjusted".
``naive`` is classify-and-count among the tiles with a label (abstained ones left out), reported
beside the estimate for the bias comparison. Numpy and the standard library only.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mscvision.core.errors import ConfigError
from mscvision.core.selective import clopper_pearson_upper, design_effect

MIN_SEPARATION = 0.2   # a_c - b_c below this: the class's count cannot be corrected (1 / 0.2 = 5x noise)
MIN_CLUSTERS = 5       # fewer clusters: n_eff = clusters (the conservative bound), no correlation estimate
OTHER_MASS_MIN = 1e-3  # pi-hat puts less than this on the other classes: weight them by calibration counts
ROW_SUM_TOLERANCE = 0.05  # a mean-probability row sums to 1 (rounded to 6 places in the metadata)
EXACT_SIMPLEX_MAX = 10  # classes up to which the simplex least squares enumerates supports (2^K)
PI_GRID = 1025  # points of [0, 1] the PACC interval's acceptance set is scanned on (then bisection)

PACC, UNADJUSTED, NOT_ADJUSTABLE, NO_TILES = "pacc", "unadjusted", "not adjustable", "no usable tiles"


@dataclass(frozen=True)
class Fraction:
    task: str
    cls: str
    estimate: float       # NaN when there is no usable tile
    low: float
    high: float
    naive: float          # classify-and-count among the tiles with a label (NaN: none labelled)
    raw_mean: float       # mean calibrated probability of the class (q_c)
    n: int                # usable tiles
    n_effective: float    # n / design_effect
    design_effect: float
    method: str           # "pacc: ..." | "unadjusted: ..." | "not adjustable: ..." | "no usable tiles"

    @property
    def kind(self) -> str:
        """The method's code: pacc | unadjusted | not adjustable | no usable tiles."""
        return self.method.split(":", 1)[0]

    def to_dict(self) -> dict:
        """The verdicts.json shape (``fractions[TASK][CLASS]``): NaN written as null."""
        out = asdict(self)
        del out["task"], out["cls"]
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def unjudgeable_reason(fraction: Fraction) -> str | None:
    """Why no PASS / FAIL may rest on this fraction (None: it can be judged on its interval)."""
    if fraction.n == 0 or not math.isfinite(fraction.estimate):
        return "no usable tiles: nothing to estimate the fraction from"
    if fraction.kind == NOT_ADJUSTABLE:
        return fraction.method.split(":", 1)[1].strip()
    return None


# --- intervals ----------------------------------------------------------------------------------------

def clopper_pearson_interval(count: float, n: float, confidence: float) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval for a proportion from a real-valued ``count`` of ``n``
    (each end at (1 - confidence) / 2); [0, 1] when n == 0."""
    if n <= 0:
        return 0.0, 1.0
    count = min(max(count, 0.0), n)
    tail = (1.0 - confidence) / 2
    # the lower end of x of n is 1 - the upper end of (n - x) of n (Beta(a, b) mirrors Beta(b, a))
    return 1.0 - clopper_pearson_upper(n - count, n, tail), clopper_pearson_upper(count, n, tail)


def effective_size(values: np.ndarray, clusters: np.ndarray | None) -> tuple[float, float]:
    """(n_eff, design effect) of per-tile values in [0, 1] grouped by cluster (module docstring)."""
    n = len(values)
    if n == 0:
        return 0.0, 1.0
    if clusters is None:
        return float(n), 1.0
    groups = len(np.unique(clusters))
    if groups < MIN_CLUSTERS:
        return float(groups), n / groups
    deff = design_effect(np.asarray(clusters), np.clip(values, 0.0, 1.0))
    return n / deff, deff


def _width_floor(n_effective: float, confidence: float, separation: float) -> float:
    """The least distance of an interval's far end from a bound: a zero count among n_eff, through the
    map's slope 1 / separation."""
    if n_effective <= 0:
        return 1.0
    zero_count_upper = 1.0 - ((1.0 - confidence) / 2) ** (1.0 / n_effective)
    return min(1.0, zero_count_upper / separation)


def _calibration_interval(mean: float, n: float, confidence: float) -> tuple[float, float]:
    """Clopper-Pearson interval of a calibration mean over ``n`` tiles (module docstring: the binomial
    variance bounds that of a mean of probabilities); the point itself when n is infinite (not given)."""
    if not math.isfinite(n):
        return mean, mean
    return clopper_pearson_interval(mean * n, n, confidence)


def pacc_interval(q: float, q_interval: tuple[float, float], a: float, a_interval: tuple[float, float],
                  b: float, b_interval: tuple[float, float]) -> tuple[float, float]:
    """The interval of pi_c = (q_c - b_c) / (a_c - b_c) in [0, 1] from the estimates and intervals of
    q_c, a_c and b_c (independent; module docstring: Fieller's pivot with MOVER).

    pi is in it when the MOVER interval of T(pi) = q - pi a - (1 - pi) b holds 0. T-hat falls with pi
    (a > b), so the set is found on a grid of ``PI_GRID`` points and each end refined by bisection;
    the ends are its outermost points. Exact ends (intervals of zero width for a and b) give the map of
    q's interval ends, clipped to [0, 1].
    """
    q_low, q_high = q_interval
    (a_low, a_high), (b_low, b_high) = a_interval, b_interval

    def accepted(pi):
        t = q - pi * a - (1.0 - pi) * b
        below = np.sqrt((q - q_low) ** 2 + (pi * (a_high - a)) ** 2 + ((1.0 - pi) * (b_high - b)) ** 2)
        above = np.sqrt((q_high - q) ** 2 + (pi * (a - a_low)) ** 2 + ((1.0 - pi) * (b - b_low)) ** 2)
        return (t - below <= 0) & (t + above >= 0)

    grid = np.linspace(0.0, 1.0, PI_GRID)
    inside = np.flatnonzero(accepted(grid))
    if not len(inside):  # q beyond what any pi in [0, 1] explains: the estimate is clipped onto that bound
        end = 1.0 if q - a > 0 else 0.0
        return end, end
    first, last = inside[0], inside[-1]
    low = grid[0] if first == 0 else _boundary(accepted, grid[first - 1], grid[first])
    high = grid[-1] if last == PI_GRID - 1 else _boundary(accepted, grid[last + 1], grid[last])
    return float(low), float(high)


def _boundary(accepted, outside: float, inside: float, steps: int = 40) -> float:
    """Bisection between a rejected and an accepted pi; returns the accepted side (the wider interval)."""
    for _ in range(steps):
        mid = (outside + inside) / 2
        if accepted(mid):
            inside = mid
        else:
            outside = mid
    return inside


# --- the simplex least squares --------------------------------------------------------------------------

def simplex_least_squares(matrix: np.ndarray, q: np.ndarray, support: Sequence[int] | None = None) -> np.ndarray:
    """pi >= 0, sum pi = 1 (zero outside ``support``) minimising ||matrix^T pi - q||^2.

    Exact for up to ``EXACT_SIMPLEX_MAX`` classes: the optimum is the equality-constrained solution on
    one face of the simplex, so every face is solved and the best non-negative one kept; beyond that,
    projected gradient descent.
    """
    matrix, q = np.asarray(matrix, dtype=np.float64), np.asarray(q, dtype=np.float64)
    k = matrix.shape[0]
    support = list(range(k)) if support is None else list(support)
    pi = np.zeros(k)
    if not support:
        return pi
    if len(support) > EXACT_SIMPLEX_MAX:
        pi[support] = _projected_gradient(matrix[support].T, q)
        return pi
    best, best_loss = None, math.inf
    for size in range(1, len(support) + 1):
        for face in itertools.combinations(support, size):
            x = _on_face(matrix[list(face)].T, q)
            if x is None or x.min() < -1e-12:
                continue
            loss = float(np.sum((matrix[list(face)].T @ x - q) ** 2))
            if loss < best_loss - 1e-15:
                best, best_loss = (face, np.clip(x, 0.0, None)), loss
    face, x = best
    pi[list(face)] = x / x.sum()
    return pi


def _on_face(a: np.ndarray, q: np.ndarray) -> np.ndarray | None:
    """argmin ||a x - q|| subject to sum x = 1 (KKT system; least-norm where a is rank-deficient)."""
    s = a.shape[1]
    kkt = np.zeros((s + 1, s + 1))
    kkt[:s, :s], kkt[:s, s], kkt[s, :s] = 2 * a.T @ a, 1.0, 1.0
    rhs = np.r_[2 * a.T @ q, 1.0]
    solution = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:s]
    return solution if np.all(np.isfinite(solution)) and abs(solution.sum() - 1.0) < 1e-9 else None


def _projected_gradient(a: np.ndarray, q: np.ndarray, steps: int = 5000) -> np.ndarray:
    x = np.full(a.shape[1], 1.0 / a.shape[1])
    step = 1.0 / max(2 * np.linalg.norm(a, 2) ** 2, 1e-12)
    for _ in range(steps):
        x = _project_to_simplex(x - step * 2 * a.T @ (a @ x - q))
    return x


def _project_to_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto the probability simplex (Duchi et al. 2008)."""
    u = np.sort(v)[::-1]
    cumulative = np.cumsum(u) - 1.0
    rho = np.nonzero(u - cumulative / np.arange(1, len(v) + 1) > 0)[0][-1]
    return np.maximum(v - cumulative[rho] / (rho + 1), 0.0)


# --- the quantification block ------------------------------------------------------------------------

def quantification_problem(block: object, n_classes: int) -> str | None:
    """What is wrong with a task's ``quantification`` block for K = ``n_classes`` (None: usable)."""
    if not isinstance(block, Mapping):
        return "quantification must be a mapping with mean_probability (K x K) and n_per_class (K)"
    try:
        matrix = np.asarray(block.get("mean_probability"), dtype=np.float64)
    except (TypeError, ValueError):
        return "quantification.mean_probability is not a K x K table of numbers"
    if matrix.shape != (n_classes, n_classes) or not np.all(np.isfinite(matrix)):
        return f"quantification.mean_probability must be {n_classes} x {n_classes} numbers, got shape {matrix.shape}"
    if matrix.min() < 0 or matrix.max() > 1:
        return "quantification.mean_probability holds probabilities: every entry in [0, 1]"
    counts = block.get("n_per_class")
    if counts is not None:
        if not isinstance(counts, list) or len(counts) != n_classes or any(
                isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts):
            return f"quantification.n_per_class must list {n_classes} counts (whole numbers >= 0)"
    sums = matrix.sum(axis=1)
    for c in range(n_classes):
        seen = counts is None or counts[c] > 0
        if seen and abs(sums[c] - 1.0) > ROW_SUM_TOLERANCE:
            return f"quantification.mean_probability row {c} sums to {sums[c]:.3f}, not 1 (a mean probability vector)"
    return None


def load_quantification(path: str | Path, tasks: Mapping[str, Sequence[str]]) -> dict[str, dict]:
    """Per-task quantification blocks from a JSON file (``{"tasks": {TASK: {"mean_probability": ..,
    "n_per_class": ..}}}``, the model metadata's shape, fitted on labelled tiles), checked against the
    model's tasks (name -> classes); ``ConfigError`` naming the file and the task otherwise. A task the
    file leaves out gets no block (its fractions are then unadjusted)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable quantification JSON ({exc})") from None
    blocks = data.get("tasks") if isinstance(data, dict) else None
    if not isinstance(blocks, dict):
        raise ConfigError(f"{path}: a quantification file holds {{\"tasks\": {{TASK: {{mean_probability, "
                          "n_per_class}}}}}}")
    for name in blocks:
        if name not in tasks:
            raise ConfigError(f"{path}: tasks.{name}: the model has no such task (its tasks: {', '.join(tasks)})")
        problem = quantification_problem(blocks[name], len(tasks[name]))
        if problem:
            raise ConfigError(f"{path}: tasks.{name}: {problem}")
    return {name: dict(block) for name, block in blocks.items()}


# --- the estimate --------------------------------------------------------------------------------------

def naive_fractions(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Classify-and-count: per class, the share of the tiles with a label (>= 0) that carry it; the
    abstained ones (-1) are left out of numerator and denominator. NaN when no tile has a label."""
    labels = np.asarray(labels)
    labelled = labels[labels >= 0]
    if not len(labelled):
        return np.full(n_classes, np.nan)
    return np.bincount(labelled, minlength=n_classes)[:n_classes] / len(labelled)


def estimate_fractions(probs: np.ndarray, labels: np.ndarray, clusters: np.ndarray | None,
                       quantification: Mapping | None, confidence: float = 0.95, *, task: str = "",
                       classes: Sequence[str] | None = None) -> list[Fraction]:
    """One ``Fraction`` per class of a task from its usable tiles (module docstring).

    probs: (n, K) calibrated probabilities; labels: (n,) class index, -1 = abstained; clusters: (n,)
    cluster ids (None: tiles independent); quantification: the task's block (None: unadjusted).
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"task {task}: probabilities must be (n_tiles, n_classes), got shape {probs.shape}")
    n, k = probs.shape
    classes = list(classes) if classes is not None else [str(c) for c in range(k)]
    if len(classes) != k:
        raise ValueError(f"task {task}: {k} probability columns for {len(classes)} classes")
    if len(labels) != n or (clusters is not None and len(clusters) != n):
        raise ValueError(f"task {task}: {n} tiles of probabilities, {len(labels)} labels, "
                         f"{'no' if clusters is None else len(clusters)} cluster ids: one of each per tile")
    naive = naive_fractions(labels, k)
    if n == 0:
        return [Fraction(task, c, math.nan, 0.0, 1.0, math.nan, math.nan, 0, 0.0, 1.0, NO_TILES) for c in classes]
    if quantification is not None:
        problem = quantification_problem(quantification, k)
        if problem:
            raise ConfigError(f"task {task}: {problem}")
    q = probs.mean(axis=0)
    out = []
    for c, (a, b, n_a, n_b, method) in enumerate(_class_maps(quantification, q, k)):
        n_eff, deff = effective_size(probs[:, c], clusters)
        q_low, q_high = clopper_pearson_interval(q[c] * n_eff, n_eff, confidence)
        adjusted = method.startswith(PACC)
        if adjusted:
            estimate = _one_vs_rest(q[c], a, b)
            low, high = pacc_interval(q[c], (q_low, q_high), a, _calibration_interval(a, n_a, confidence),
                                      b, _calibration_interval(b, n_b, confidence))
        else:
            estimate, low, high = float(q[c]), float(q_low), float(q_high)
        floor = _width_floor(n_eff, confidence, a - b if adjusted else 1.0)
        out.append(Fraction(task, classes[c], estimate, min(low, 1.0 - floor), max(high, floor), float(naive[c]),
                            float(q[c]), n, float(n_eff), float(deff), method))
    return out


def _one_vs_rest(q_c: float, a: float, b: float) -> float:
    """pi_c = (q_c - b_c) / (a_c - b_c) clipped to [0, 1]: increasing in q_c (a_c - b_c > 0)."""
    return float(min(max((q_c - b) / (a - b), 0.0), 1.0))


def _class_maps(quantification: Mapping | None, q: np.ndarray,
                k: int) -> list[tuple[float, float, float, float, str]]:
    """Per class (a_c, b_c, n_a, n_b, method) of the one-vs-rest map (module docstring): n_a and n_b are
    the calibration tiles a_c and b_c are means over (b_c's the effective size of its weighted mean);
    infinite when the block gives no counts (M then taken as known)."""
    if quantification is None:
        return [(1.0, 0.0, math.inf, math.inf,
                 f"{UNADJUSTED}: mean calibrated probability (the model carries no quantification)")] * k
    matrix = np.asarray(quantification["mean_probability"], dtype=np.float64)
    counts = quantification.get("n_per_class")
    known = counts is not None
    counts = np.asarray(counts, dtype=np.float64) if known else np.ones(k)
    calibrated = [j for j in range(k) if counts[j] > 0 and abs(matrix[j].sum() - 1.0) <= ROW_SUM_TOLERANCE]
    pi = simplex_least_squares(matrix, q, calibrated)
    maps = []
    for c in range(k):
        others = [j for j in calibrated if j != c]
        if c not in calibrated:
            maps.append((0.0, 0.0, math.inf, math.inf,
                         f"{NOT_ADJUSTABLE}: the calibration data held no tile of this class, so the model's "
                         "confusions for it are unknown"))
            continue
        weights = pi[others]
        if weights.sum() < OTHER_MASS_MIN:
            weights = counts[others]
        if not others or weights.sum() <= 0:
            maps.append((0.0, 0.0, math.inf, math.inf,
                         f"{NOT_ADJUSTABLE}: no other class was calibrated to correct against"))
            continue
        weights = weights / weights.sum()
        a, b = float(matrix[c, c]), float(np.dot(weights, matrix[others, c]))
        n_a, n_b = (float(counts[c]), float(1.0 / np.sum(weights ** 2 / counts[others]))) if known else (math.inf,) * 2
        if a - b < MIN_SEPARATION:
            maps.append((a, b, n_a, n_b,
                         f"{NOT_ADJUSTABLE}: the model puts {a:.2f} on this class for its own tiles and "
                         f"{b:.2f} for the others' (separation {a - b:.2f} < {MIN_SEPARATION}), too close to "
                         "correct its count"))
        elif known:
            maps.append((a, b, n_a, n_b,
                         f"{PACC}: corrected with the calibration confusions (a {a:.3f} over {n_a:.0f} tiles, "
                         f"b {b:.3f} over {n_b:.0f} effective; their sampling error is in the interval)"))
        else:
            maps.append((a, b, n_a, n_b,
                         f"{PACC}: corrected with the calibration confusions (a {a:.3f}, b {b:.3f}; the block "
                         "gives no calibration counts, so their sampling error is not in the interval)"))
    return maps
