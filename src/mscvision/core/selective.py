"""Abstention with a stated guarantee: the confidence threshold below which an image goes to a person.

The claim: with probability >= 1 - delta over the draw of the calibration data, the accuracy of
the images that get a label (top-class probability >= threshold) is at least ``target_accuracy``.

How it is chosen (Learn then Test, Angelopoulos et al. 2021, with fixed-sequence testing):
- candidate thresholds form a fixed grid, decided before seeing any data (``THRESHOLD_GRID``), and
  are scanned from the strictest to the most permissive;
- at each one, the null hypothesis "selective error > 1 - target" is rejected when the one-sided
  Clopper-Pearson upper bound on the error of the labelled calibration images is <= 1 - target
  (exact: given how many images pass a fixed threshold, their errors are binomial);
- the scan stops at the first threshold it cannot certify; the last certified one is used. Each
  test runs at the full delta; stopping at the first failure is what keeps the family-wise error
  at delta (fixed-sequence testing spends nothing on the scan).
- thresholds that too few calibration images pass are passed over before the first test: the scan
  starts where ``START_ERRORS`` (2) errors among the labelled images could still be certified
  (``first_tested_count``), so that an unlucky error or two among the very first images (whose
  bound the design effect also widens) does not end it. That count depends on the confidences only, never on the labels; when the selective error
  falls as the threshold rises (the premise of thresholding on confidence) it only makes the first
  tested threshold a safer one. The guarantee is checked empirically on real data by re-drawing
  calibration and test groups (docs/calibration.md).

When no threshold is certified, the certificate says so and the model abstains on everything.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# strict → permissive, dense near 1 where confident classifiers put their thresholds
THRESHOLD_GRID = tuple(float(t) for t in np.unique(np.round(1 - np.geomspace(1e-4, 1.0, 400), 6))[::-1])
MAX_CURVE_POINTS = 200
START_ERRORS = 2  # the scan starts where this many errors could still be certified (first_tested_count)


@dataclass(frozen=True)
class Certificate:
    threshold: float  # top-class probability at or above which a label is given
    certified: bool  # False: no threshold met the target; every image goes to review
    target_accuracy: float
    delta: float
    n_calibration: int
    coverage: float  # on the calibration data, at the threshold
    selective_accuracy: float | None
    risk_bound: float | None  # Clopper-Pearson upper bound on the selective error at the threshold
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def clopper_pearson_upper(errors: float, n: float, delta: float) -> float:
    """One-sided (1 - delta) upper confidence bound on an error rate from ``errors`` of ``n``.

    The (1 - delta) quantile of Beta(errors + 1, n - errors), by bisection on the regularized
    incomplete beta function (no scipy at the station). Real-valued counts are accepted: an
    effective sample size (``design_effect``) gives them. 1.0 when n == 0 or errors == n.
    """
    if n <= 0 or errors >= n:
        return 1.0
    if errors <= 0:
        return 1.0 - delta ** (1.0 / n)
    low, high = errors / n, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        if regularized_beta(errors + 1, n - errors, mid) < 1.0 - delta:
            low = mid
        else:
            high = mid
    return high


def _bound_within(errors: float, n: float, delta: float, allowed: float) -> bool:
    """Clopper-Pearson upper bound <= ``allowed``, from one incomplete-beta value (no bisection)."""
    if n <= 0 or errors >= n:
        return False
    return regularized_beta(errors + 1, n - errors, allowed) >= 1.0 - delta


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the Beta(a, b) CDF at x: Lentz's continued fraction (Numerical Recipes 6.4)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny, c = 1e-300, 1.0
    d = 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 3e-14:
            break
    return h


def design_effect(groups: np.ndarray, errors: np.ndarray) -> float:
    """Kish's design effect of clustered values in [0, 1] (0/1 errors, or a per-tile probability),
    1 + (m - 1) rho: m the size-weighted mean group size, rho the ANOVA estimate of the intra-group
    correlation (clipped to [0, 1]).

    Images of one well or donor share their errors (focus, staining, a hard culture): n of them
    carry the information of about n / deff independent images, and a bound that counts them as
    independent is too narrow. 1 when the values are all 0, all 1, or there are fewer than 2 groups.
    The within-group sum of squares is measured (for 0/1 values it equals m * rate * (1 - rate)).
    """
    values = np.asarray(errors, dtype=np.float64)
    _, index = np.unique(groups, return_inverse=True)
    m = np.bincount(index).astype(np.float64)
    e = np.bincount(index, weights=values)
    n, g, total = m.sum(), len(m), e.sum()
    if g < 2 or total <= 0 or total >= n or n <= g:
        return 1.0
    p, rate = total / n, e / m
    between = float(np.sum(m * (rate - p) ** 2) / (g - 1))
    within = max(float(np.sum(values ** 2) - np.sum(m * rate ** 2)), 0.0) / (n - g)
    m0 = (n - np.sum(m ** 2) / n) / (g - 1)
    denominator = between + (m0 - 1) * within
    rho = (between - within) / denominator if denominator > 0 else 0.0
    return float(1.0 + (np.sum(m ** 2) / n - 1.0) * min(max(rho, 0.0), 1.0))


def minimum_labelled(target_accuracy: float, delta: float) -> int:
    """The fewest labelled images with which zero errors can certify ``target_accuracy`` at ``delta``."""
    return math.ceil(math.log(delta) / math.log(target_accuracy))


def first_tested_count(target_accuracy: float, delta: float) -> int:
    """The fewest labelled images with which ``START_ERRORS`` errors can still certify the target: the
    scan's start (a choice made before the data, from the target and delta alone)."""
    n = minimum_labelled(target_accuracy, delta)
    while clopper_pearson_upper(START_ERRORS, n, delta) > 1.0 - target_accuracy:
        n += max(1, n // 100)
    return n


def certify_threshold(confidence: np.ndarray, correct: np.ndarray, target_accuracy: float = 0.99,
                      delta: float = 0.05, groups: np.ndarray | None = None) -> Certificate:
    """The most permissive grid threshold certified by fixed-sequence testing (module docstring).

    ``groups`` (per image): the bound counts the labelled images as n / deff independent ones, with
    the design effect of their errors over the groups (``design_effect``), so that a calibration
    set of a few wells is not taken for thousands of independent images.
    """
    if not (0.0 < target_accuracy < 1.0 and 0.0 < delta < 1.0):
        raise ValueError(f"target_accuracy {target_accuracy} and delta {delta} must lie in (0, 1)")
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=bool)
    n_min, allowed = first_tested_count(target_accuracy, delta), 1.0 - target_accuracy
    order = np.argsort(-confidence, kind="stable")
    ranked, wrong = confidence[order], ~correct[order]
    ranked_groups = None if groups is None else np.asarray(groups)[order]
    errors_within = np.cumsum(wrong)
    best: tuple[float, int, int, float] | None = None
    stopped = ""
    for threshold in THRESHOLD_GRID:
        n = int(np.searchsorted(-ranked, -threshold, side="right"))  # images with confidence >= threshold
        if n < n_min:
            continue
        errors = int(errors_within[n - 1])
        deff = 1.0 if ranked_groups is None else design_effect(ranked_groups[:n], wrong[:n])
        if not _bound_within(errors / deff, n / deff, delta, allowed):
            stopped = (f"at threshold {threshold:.4f}: {errors} errors among {n} labelled calibration images"
                       f"{f' (design effect {deff:.2f})' if deff > 1 else ''}, error bound "
                       f"{clopper_pearson_upper(errors / deff, n / deff, delta):.4f} > {allowed:.4f}")
            break
        best = (threshold, n, errors, deff)
    total = len(confidence)
    if best is None:
        why = stopped or (f"{int((confidence >= THRESHOLD_GRID[-1]).sum())} calibration images; the scan needs "
                          f"{n_min}, the fewest with which {START_ERRORS} errors could still be certified")
        return Certificate(1.0, False, target_accuracy, delta, total, 0.0, None, None,
                           f"no threshold certifies accuracy >= {target_accuracy} at delta {delta} ({why}): "
                           "every image goes to review")
    threshold, n, errors, deff = best
    bound = clopper_pearson_upper(errors / deff, n / deff, delta)
    counted = f", counted as {n / deff:.0f} for their design effect {deff:.2f} over groups" if deff > 1 else ""
    return Certificate(threshold, True, target_accuracy, delta, total, n / total, 1 - errors / n, bound,
                       f"accuracy of labelled images >= {target_accuracy} with probability >= {1 - delta:.2f} "
                       f"(Clopper-Pearson bound {bound:.4f} on the error of {n} of {total} calibration images"
                       f"{counted}; fixed-sequence scan{', stopped ' + stopped if stopped else ''})")


def selective_figures(confidence: np.ndarray, correct: np.ndarray, threshold: float,
                      certified: bool = True) -> dict:
    """Coverage and accuracy of the labelled images at ``threshold`` (``certified`` False: none labelled)."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=bool)
    chosen = confidence >= threshold if certified else np.zeros(len(confidence), bool)
    n_labelled = int(chosen.sum())
    return {"threshold": float(threshold), "certified": bool(certified),
            "coverage": n_labelled / len(confidence) if len(confidence) else 0.0,
            "selective_accuracy": float(correct[chosen].mean()) if n_labelled else None,
            "n": int(len(confidence)), "n_labelled": n_labelled}


def _by_threshold(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct confidences (descending), and how many images / correct ones are at or above each."""
    order = np.argsort(-confidence, kind="stable")
    c, ok = confidence[order], correct[order]
    last = np.r_[np.flatnonzero(np.diff(c) != 0), len(c) - 1]  # the last index of each run of ties
    return c[last], last + 1, np.cumsum(ok)[last]


def oracle_coverage(confidence: np.ndarray, correct: np.ndarray, target_accuracy: float) -> dict:
    """The largest coverage whose selective accuracy on THIS set reaches the target: the best a
    threshold chosen on the evaluation data itself could do (no deployment can know it)."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=bool)
    if not len(confidence):
        return {"threshold": None, "coverage": 0.0, "selective_accuracy": None}
    values, n, right = _by_threshold(confidence, correct)
    meets = np.flatnonzero(right / n >= target_accuracy)
    if not len(meets):
        return {"threshold": None, "coverage": 0.0, "selective_accuracy": None}
    i = meets[-1]
    return {"threshold": float(values[i]), "coverage": float(n[i] / len(confidence)),
            "selective_accuracy": float(right[i] / n[i])}


def risk_coverage_curve(confidence: np.ndarray, correct: np.ndarray) -> dict:
    """Selective accuracy against coverage, one point per distinct confidence (thinned to
    ``MAX_CURVE_POINTS``), from the most confident image down."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=bool)
    if not len(confidence):
        return {"coverage": [], "selective_accuracy": [], "threshold": []}
    values, n, right = _by_threshold(confidence, correct)
    keep = np.unique(np.linspace(0, len(values) - 1, min(len(values), MAX_CURVE_POINTS)).round().astype(int))
    return {"coverage": (n[keep] / len(confidence)).tolist(), "selective_accuracy": (right[keep] / n[keep]).tolist(),
            "threshold": values[keep].tolist()}
