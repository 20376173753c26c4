"""Class fractions of a well or lot from per-tile probabilities, corrected for the model's own confusions,
with an interval that respects how tiles cluster and how the model's confusions vary between wells.

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
- between wells (a random-effects view, issue 17): the binomial term above says how well the pooled M
  is known, as if every well shared it. They do not: wells differ in donor, density and morphology
  mix, and the model's confusions move with them (on a synthetic lot it read 160 of 252 truly
  undifferentiated tiles of one well as chondrogenic and was ~97 % right in the clean ones), so a new
  well's M is a draw around the pooled one, and an interval that knows only the binomial term misses
  such wells. When the block carries ``per_well`` rows (``scripts/qc_quantification.py``: per
  calibration well and true class, the well's mean calibrated probability row and its tile count),
  each entry of M gets the interval a new well's value falls in: for a true class j seen in k >=
  ``MIN_WELLS`` wells, the t prediction interval around the pooled value, half-width
  t_{k-1} * s * sqrt(1 + 1/k), s the standard deviation of the k wells' values (unweighted: each well
  is one draw), clipped to [0, 1]. Only rows over >= ``MIN_WELL_TILES`` tiles count: a well's mean
  over n tiles carries its own sampling error (sd up to sqrt(mu (1 - mu) / n), and more, tiles within a
  well being alike), which s takes for between-well spread; it is left in (conservative: the spread
  is over-, never under-stated), and 10 tiles keeps it from swamping s (a row over 2 or 3 tiles is
  noise, not that well's confusion), while still letting a rare class's few wells count. a_c's
  interval is then the wider of the two (the lower of the two lower ends, the higher of the upper),
  not the two variances added: the prediction interval already holds the pooled mean's own error
  (the 1/k in it; in a random-effects view that error is s^2 / k, not the binomial one), so adding the
  binomial variance would count it twice, and the binomial interval is kept as a floor for
  calibration wells that look alike by chance. b_c's between-well interval is the weighted sum of its
  rows' ends (w_j as above), as if the other classes' confusions moved together in a well (a blurred
  or crowded well shifts them all; summing in quadrature would assume they cancel), then the wider
  of it and b_c's binomial interval. These enter Fieller / MOVER as before, independent of q_c's
  sampling error (the new well's M is drawn before its tiles are). For a lot's pooled tiles this is
  conservative (their M averages several wells'). A true class seen in fewer than ``MIN_WELLS`` wells
  has no estimable spread (two values give a t quantile of 12.7 and an s of nothing); the method says
  so, and rather than fall back on the binomial term alone (which is what missed) or refuse to correct
  (which would send every criterion that leans on a rare class's row to review, undifferentiated
  through b included), its diagonal entry spans every own-class value (M[j, j]) any calibration well
  showed and its other entries every other-class value: what this model did on this kind of tile,
  wide, and honest that it is borrowed. No usable well at all: only the binomial term, said so. The
  point estimate is unchanged; the work is a few arrays of K x K per call.
- never zero width: the ends are kept at least as far from 0 and from 1 as a count of zero among
  n_eff would put them (``_width_floor``), so an estimate clipped onto a bound keeps an interval.

No quantification (an older model): the raw mean of calibrated probabilities, method "unadjusted".
``naive`` is classify-and-count among the tiles with a label (abstained ones left out), reported
beside the estimate for the bias comparison. Numpy and the standard library only.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mscvision.core.errors import ConfigError
from mscvision.core.selective import clopper_pearson_upper, design_effect, regularized_beta

MIN_SEPARATION = 0.2   # a_c - b_c below this: the class's count cannot be corrected (1 / 0.2 = 5x noise)
MIN_CLUSTERS = 5       # fewer clusters: n_eff = clusters (the conservative bound), no correlation estimate
OTHER_MASS_MIN = 1e-3  # pi-hat puts less than this on the other classes: weight them by calibration counts
ROW_SUM_TOLERANCE = 0.05  # a mean-probability row sums to 1 (rounded to 6 places in the metadata)
EXACT_SIMPLEX_MAX = 10  # classes up to which the simplex least squares enumerates supports (2^K)
PI_GRID = 1025  # points of [0, 1] the PACC interval's acceptance set is scanned on (then bisection)
MIN_WELL_TILES = 10  # a per-well row over fewer tiles of its class is not used (module docstring)
MIN_WELLS = 3   # fewer calibration wells with a class: its between-well spread is not estimated

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


@functools.lru_cache(maxsize=256)
def student_t_quantile(df: int, confidence: float) -> float:
    """The two-sided Student t quantile: P(|T_df| <= t) = ``confidence``.

    P(|T| > t) = I_x(df / 2, 1 / 2) with x = df / (df + t^2) (increasing in x), so x is found by
    bisection on the regularized incomplete beta (no scipy at the station) and t = sqrt(df (1 - x) / x).
    """
    if df < 1:
        raise ValueError(f"a t quantile needs df >= 1, got {df}")
    tail, low, high = 1.0 - confidence, 0.0, 1.0
    for _ in range(100):
        mid = (low + high) / 2
        if regularized_beta(df / 2, 0.5, mid) < tail:
            low = mid
        else:
            high = mid
    x = (low + high) / 2
    return math.sqrt(df * (1.0 - x) / x)


@dataclass(frozen=True)
class _BetweenWells:
    """Per entry of M, where a new well's value may lie (module docstring, "between wells")."""
    low: np.ndarray       # K x K
    high: np.ndarray      # K x K
    wells: list[int]      # per true class: calibration wells with >= MIN_WELL_TILES of its tiles
    any_well: bool        # some calibration well had >= MIN_WELL_TILES tiles of some class


def _between_wells(block: Mapping, matrix: np.ndarray, confidence: float) -> _BetweenWells | None:
    """The between-well intervals of every entry of M from the block's ``per_well`` rows (None: the
    block has none). A row of M with >= ``MIN_WELLS`` wells: the t prediction interval for a new well
    around the pooled value, half-width t(k - 1) * sd * sqrt(1 + 1 / k) (sd over the k wells' means,
    unweighted: each well is one draw), clipped to [0, 1]. Fewer wells: the diagonal entry spans every
    own-class value any calibration well showed, the others every other-class value (and the pooled
    value itself); no usable well at all: the point (only the binomial term is left)."""
    rows = block.get("per_well")
    if rows is None:
        return None
    k = matrix.shape[0]
    values: list[list] = [[] for _ in range(k)]
    for row in rows:
        if row["n"] >= MIN_WELL_TILES:
            values[row["class"]].append(row["mean_probability"])
    wells = [len(v) for v in values]
    own, other = [], []
    for j, v in enumerate(values):
        if v:
            table = np.asarray(v, dtype=np.float64)
            own.extend(table[:, j])
            other.extend(np.delete(table, j, axis=1).ravel())
    low, high = matrix.copy(), matrix.copy()
    for j in range(k):
        if wells[j] >= MIN_WELLS:
            table = np.asarray(values[j], dtype=np.float64)
            half = (student_t_quantile(wells[j] - 1, confidence) * table.std(axis=0, ddof=1)
                    * math.sqrt(1.0 + 1.0 / wells[j]))
            low[j], high[j] = np.clip(matrix[j] - half, 0.0, 1.0), np.clip(matrix[j] + half, 0.0, 1.0)
        elif own:
            rest = [c for c in range(k) if c != j]
            low[j, j], high[j, j] = min(matrix[j, j], min(own)), max(matrix[j, j], max(own))
            low[j, rest] = np.minimum(matrix[j, rest], min(other))
            high[j, rest] = np.maximum(matrix[j, rest], max(other))
    return _BetweenWells(low, high, wells, bool(own))


def _union(first: tuple[float, float], second: tuple[float, float]) -> tuple[float, float]:
    return min(first[0], second[0]), max(first[1], second[1])


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
    if block.get("per_well") is not None:
        return _per_well_problem(block["per_well"], n_classes, counts)
    return None


def _per_well_problem(rows: object, k: int, counts: list | None) -> str | None:
    """What is wrong with an optional ``per_well`` list (None: usable): rows {well, class (the true
    class's index), n (its tiles in that well), mean_probability (K)}, one per well and class, their
    tiles a split of ``n_per_class``'s."""
    shape = "rows {well, class, n, mean_probability}, one per calibration well and true class"
    if not isinstance(rows, list):
        return f"quantification.per_well must be a list of {shape}"
    seen, totals = set(), [0] * k
    for i, row in enumerate(rows):
        key = f"quantification.per_well[{i}]"
        if not isinstance(row, Mapping):
            return f"{key} must be a mapping: {shape}"
        missing = [f for f in ("well", "class", "n", "mean_probability") if f not in row]
        if missing:
            return f"{key} lacks {', '.join(missing)} ({shape})"
        well, cls, n = row["well"], row["class"], row["n"]
        if not isinstance(well, str) or not well.strip():
            return f"{key}.well must name the calibration well (a non-empty string), got {well!r}"
        if isinstance(cls, bool) or not isinstance(cls, int) or not 0 <= cls < k:
            return f"{key}.class must be the true class's index, 0 to {k - 1}, got {cls!r}"
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            return f"{key}.n must count the well's tiles of that class (a whole number >= 1), got {n!r}"
        try:
            probs = np.asarray(row["mean_probability"], dtype=np.float64)
        except (TypeError, ValueError):
            return f"{key}.mean_probability is not a list of {k} numbers"
        if probs.shape != (k,) or not np.all(np.isfinite(probs)):
            return f"{key}.mean_probability must be {k} numbers, got shape {probs.shape}"
        if probs.min() < 0 or probs.max() > 1:
            return f"{key}.mean_probability holds probabilities: every entry in [0, 1]"
        if abs(probs.sum() - 1.0) > ROW_SUM_TOLERANCE:
            return f"{key}.mean_probability sums to {probs.sum():.3f}, not 1 (a mean probability vector)"
        if (well, cls) in seen:
            return f"{key}: a second row for well {well!r} and class {cls} (one row per well and class)"
        seen.add((well, cls))
        totals[cls] += n
    for c in range(k):
        if counts is not None and totals[c] > counts[c]:
            return (f"quantification.per_well: the rows of class {c} count {totals[c]} tiles, more than "
                    f"n_per_class[{c}] = {counts[c]} (they split the same calibration tiles by well)")
    return None


def load_quantification(path: str | Path, tasks: Mapping[str, Sequence[str]]) -> dict[str, dict]:
    """Per-task quantification blocks from a JSON file (``{"tasks": {TASK: {"mean_probability": ..,
    "n_per_class": .., "per_well": [..]}}}``, the model metadata's shape plus the optional per-well rows
    ``scripts/qc_quantification.py`` writes, fitted on labelled tiles), checked against the model's
    tasks (name -> classes); ``ConfigError`` naming the file, the task and the key otherwise. A task the
    file leaves out gets no block (its fractions are then unadjusted)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable quantification JSON ({exc})") from None
    blocks = data.get("tasks") if isinstance(data, dict) else None
    if not isinstance(blocks, dict):
        raise ConfigError(f"{path}: a quantification file holds {{\"tasks\": {{TASK: {{mean_probability, "
                          "n_per_class, optional per_well}}}}}}")
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
    for c, (a, b, a_interval, b_interval, method) in enumerate(_class_maps(quantification, q, k, confidence)):
        n_eff, deff = effective_size(probs[:, c], clusters)
        q_low, q_high = clopper_pearson_interval(q[c] * n_eff, n_eff, confidence)
        adjusted = method.startswith(PACC)
        if adjusted:
            estimate = _one_vs_rest(q[c], a, b)
            low, high = pacc_interval(q[c], (q_low, q_high), a, a_interval, b, b_interval)
        else:
            estimate, low, high = float(q[c]), float(q_low), float(q_high)
        floor = _width_floor(n_eff, confidence, a - b if adjusted else 1.0)
        out.append(Fraction(task, classes[c], estimate, min(low, 1.0 - floor), max(high, floor), float(naive[c]),
                            float(q[c]), n, float(n_eff), float(deff), method))
    return out


def _one_vs_rest(q_c: float, a: float, b: float) -> float:
    """pi_c = (q_c - b_c) / (a_c - b_c) clipped to [0, 1]: increasing in q_c (a_c - b_c > 0)."""
    return float(min(max((q_c - b) / (a - b), 0.0), 1.0))


Interval = tuple[float, float]


def _class_maps(quantification: Mapping | None, q: np.ndarray, k: int,
                confidence: float) -> list[tuple[float, float, Interval, Interval, str]]:
    """Per class (a_c, b_c, a_c's interval, b_c's interval, method) of the one-vs-rest map (module
    docstring). Each interval is the calibration mean's Clopper-Pearson interval (n_c tiles; b_c's on the
    effective size of its weighted mean), or the point when the block gives no counts (M then taken as
    known), widened to a new well's range when the block has ``per_well`` rows."""
    if quantification is None:
        return [(1.0, 0.0, (1.0, 1.0), (0.0, 0.0),
                 f"{UNADJUSTED}: mean calibrated probability (the model carries no quantification)")] * k
    matrix = np.asarray(quantification["mean_probability"], dtype=np.float64)
    counts = quantification.get("n_per_class")
    known = counts is not None
    counts = np.asarray(counts, dtype=np.float64) if known else np.ones(k)
    calibrated = [j for j in range(k) if counts[j] > 0 and abs(matrix[j].sum() - 1.0) <= ROW_SUM_TOLERANCE]
    pi = simplex_least_squares(matrix, q, calibrated)
    between = _between_wells(quantification, matrix, confidence)
    maps = []
    for c in range(k):
        others = [j for j in calibrated if j != c]
        if c not in calibrated:
            maps.append((0.0, 0.0, (0.0, 0.0), (0.0, 0.0),
                         f"{NOT_ADJUSTABLE}: the calibration data held no tile of this class, so the model's "
                         "confusions for it are unknown"))
            continue
        weights = pi[others]
        if weights.sum() < OTHER_MASS_MIN:
            weights = counts[others]
        if not others or weights.sum() <= 0:
            maps.append((0.0, 0.0, (0.0, 0.0), (0.0, 0.0),
                         f"{NOT_ADJUSTABLE}: no other class was calibrated to correct against"))
            continue
        weights = weights / weights.sum()
        a, b = float(matrix[c, c]), float(np.dot(weights, matrix[others, c]))
        n_a, n_b = (float(counts[c]), float(1.0 / np.sum(weights ** 2 / counts[others]))) if known else (math.inf,) * 2
        a_interval, b_interval = _calibration_interval(a, n_a, confidence), _calibration_interval(b, n_b, confidence)
        if a - b < MIN_SEPARATION:
            maps.append((a, b, a_interval, b_interval,
                         f"{NOT_ADJUSTABLE}: the model puts {a:.2f} on this class for its own tiles and "
                         f"{b:.2f} for the others' (separation {a - b:.2f} < {MIN_SEPARATION}), too close to "
                         "correct its count"))
            continue
        if between is None:
            if known:
                method = (f"{PACC}: corrected with the calibration confusions (a {a:.3f} over {n_a:.0f} tiles, "
                          f"b {b:.3f} over {n_b:.0f} effective; their sampling error is in the interval)")
            else:
                method = (f"{PACC}: corrected with the calibration confusions (a {a:.3f}, b {b:.3f}; the block "
                          "gives no calibration counts, so their sampling error is not in the interval)")
            maps.append((a, b, a_interval, b_interval, method))
            continue
        # a new well's confusions are a draw: each of a and b takes the wider of the two intervals
        a_interval = _union(a_interval, (float(between.low[c, c]), float(between.high[c, c])))
        b_interval = _union(b_interval, (float(np.dot(weights, between.low[others, c])),
                                         float(np.dot(weights, between.high[others, c]))))
        maps.append((a, b, a_interval, b_interval,
                     _between_method(a, b, n_a, n_b, a_interval, b_interval, between, c, others, weights, known)))
    return maps


def _between_method(a: float, b: float, n_a: float, n_b: float, a_interval: Interval, b_interval: Interval,
                    between: _BetweenWells, c: int, others: list[int], weights: np.ndarray, known: bool) -> str:
    """The method of a PACC class whose block has per-well rows: what the interval carries."""
    sizes = (f"a {a:.3f} over {n_a:.0f} tiles, b {b:.3f} over {n_b:.0f} effective" if known
             else f"a {a:.3f}, b {b:.3f}; no calibration counts, so no sampling error")
    text = (f"{PACC}: corrected with the calibration confusions ({sizes}); a new well's confusions are a "
            f"draw, taken as a in [{a_interval[0]:.3f}, {a_interval[1]:.3f}] and b in "
            f"[{b_interval[0]:.3f}, {b_interval[1]:.3f}]")
    if not between.any_well:
        return (text + f": no calibration well had >= {MIN_WELL_TILES} tiles of a class, so between-well "
                f"variation could not be estimated{'; only the sampling error is in the interval' if known else ''}")
    if between.wells[c] >= MIN_WELLS:
        text += f" (a: the spread over {between.wells[c]} calibration wells"
    else:
        text += (f" (a: between-well variation could not be estimated for this class, {between.wells[c]} "
                 f"calibration well(s) with >= {MIN_WELL_TILES} of its tiles, {MIN_WELLS} needed, so a spans "
                 "the own-class values of every calibration well")
    few = [j for j, w in zip(others, weights) if w > 0 and between.wells[j] < MIN_WELLS]
    if few:
        text += (f"; b: {len(few)} of the other classes with < {MIN_WELLS} wells span the other-class "
                 "values of every calibration well")
    return text + ")"
