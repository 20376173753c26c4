"""An empirical check of the abstention guarantee: re-draw calibration and test GROUPS many times.

Each draw splits the groups of a pool of held-out predictions (e.g. cross-validation's out-of-fold
probabilities: every image scored by a model that never trained on it) into calibration and test
groups, fits the temperature and certifies the threshold on the calibration groups exactly as
training does (``core.calibration``, ``core.selective``), and measures the selective accuracy on
the test groups. The guarantee says: a draw whose labelled images fall below the target happens in
at most about delta of the draws.

A test set is itself a sample, so a draw can fall below the target by chance even when the
threshold is right. Two counts are reported: ``below_target`` (the test selective accuracy is
below the target at all) and ``clearly_below`` (even its one-sided 95% Clopper-Pearson upper bound
is below the target: the test groups show the shortfall beyond their own sampling noise).
"""

from __future__ import annotations

import numpy as np

from mscvision.core.calibration import apply_temperature, fit_temperature
from mscvision.core.selective import certify_threshold, clopper_pearson_upper

_EPS = 1e-12


def redraw_guarantee(probs: np.ndarray, labels: np.ndarray, groups: np.ndarray, target_accuracy: float,
                     delta: float, draws: int = 200, calibration_share: float = 0.5, seed: int = 0,
                     by_group: bool = True) -> dict:
    """Per draw: certify on a random ``calibration_share`` of the groups, measure on the rest
    (``by_group``: the bound allows for the groups' design effect, as training does)."""
    rng = np.random.default_rng(seed)
    log_probs = np.log(np.maximum(np.asarray(probs, dtype=np.float64), _EPS))
    labels, groups = np.asarray(labels), np.asarray(groups)
    names = np.unique(groups)
    results = []
    for _ in range(draws):
        chosen = rng.permutation(names)[:max(1, round(calibration_share * len(names)))]
        calibration = np.isin(groups, chosen)
        t = fit_temperature(log_probs[calibration], labels[calibration])
        cal_p, test_p = apply_temperature(log_probs[calibration], t), apply_temperature(log_probs[~calibration], t)
        certificate = certify_threshold(cal_p.max(axis=1), cal_p.argmax(axis=1) == labels[calibration],
                                        target_accuracy, delta, groups[calibration] if by_group else None)
        confidence, correct = test_p.max(axis=1), test_p.argmax(axis=1) == labels[~calibration]
        labelled = confidence >= certificate.threshold if certificate.certified else np.zeros(len(correct), bool)
        n, right = int(labelled.sum()), int(correct[labelled].sum())
        results.append({"certified": certificate.certified, "coverage": n / len(correct),
                        "selective_accuracy": right / n if n else None,
                        # the one-sided 95% upper bound on the test accuracy (the bound, applied to "correct")
                        "accuracy_upper_95": clopper_pearson_upper(right, n, 0.05) if n else None})
    certified = [r for r in results if r["certified"] and r["selective_accuracy"] is not None]
    below = [r for r in certified if r["selective_accuracy"] < target_accuracy]
    clearly = [r for r in certified if r["accuracy_upper_95"] < target_accuracy]
    return {"draws": draws, "target_accuracy": target_accuracy, "delta": delta, "calibration_share": calibration_share,
            "bound": "design effect over groups" if by_group else "images counted as independent",
            "groups": int(len(names)), "images": int(len(labels)), "certified_draws": len(certified),
            "below_target": len(below) / draws, "clearly_below": len(clearly) / draws,
            "mean_coverage": float(np.mean([r["coverage"] for r in results])),
            "mean_selective_accuracy": (float(np.mean([r["selective_accuracy"] for r in certified]))
                                        if certified else None)}

