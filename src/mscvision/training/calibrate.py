"""Calibration of a run's deployed pass: a temperature and a certified review threshold per task.

Both are fitted on the val split (groups the model never trained on, and not the test split; with
``data.val_fraction 0`` the calibration slice, ``calibration.holdout_fraction``), then measured on
the test split. The numbers come from ``core.calibration`` and ``core.selective``, the same code
that ``mscvision evaluate`` runs at a station. Export reads ``calibration.json`` and puts both into
the graph (temperature) and its metadata (threshold and certificate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mscvision.core.calibration import apply_temperature, calibration_figures, fit_temperature
from mscvision.core.selective import certify_threshold, oracle_coverage, selective_figures
from mscvision.core.tasks import IGNORE_INDEX, Task

CALIBRATION_SCHEMA = "mscvision.calibration/1"


@dataclass(frozen=True)
class Calibration:
    temperatures: dict[str, float]
    settings: dict  # calibration.json: what export puts into the model
    metrics: dict  # metrics.json "calibration" and "abstention" blocks


def fit_calibration(val_views: dict[str, np.ndarray], val_targets: dict[str, np.ndarray],
                    test_views: dict[str, np.ndarray], test_targets: dict[str, np.ndarray], tasks: list[Task],
                    decide, val_groups: np.ndarray | None = None) -> Calibration:
    """Per task: T by NLL on val, the threshold certified on val's calibrated probabilities
    (``decide``: target_accuracy, delta; ``val_groups``: the bound allows for their design effect),
    and the before/after and coverage figures on test."""
    temperatures, settings, calibration, abstention = {}, {}, {}, {}
    for task in tasks:
        name = task.name
        y_val, y_test = val_targets[name], test_targets[name]
        if not (y_val != IGNORE_INDEX).any():  # a partly labelled manifest: nothing to calibrate this task on
            temperatures[name] = 1.0
            settings[name] = {"temperature": 1.0, "threshold": 1.0, "abstention": {
                "certified": False, "reason": f"no val image has a {name} label: not calibrated, every image "
                                              "goes to review"}}
            continue
        t = fit_temperature(val_views[name], y_val)
        val_p, test_p = apply_temperature(val_views[name], t), apply_temperature(test_views[name], t)
        known = y_val != IGNORE_INDEX
        certificate = certify_threshold(*_confidence_and_correct(val_p, y_val), decide.target_accuracy, decide.delta,
                                        None if val_groups is None else np.asarray(val_groups)[known])
        temperatures[name] = t
        settings[name] = {"temperature": t, "threshold": certificate.threshold, "abstention": certificate.to_dict(),
                          "quantification": quantification_block(val_p, y_val, len(task.classes))}
        calibration[name] = {
            "temperature": t, "fitted_on": f"val: {int((y_val != IGNORE_INDEX).sum())} images of groups never trained on",
            "test": {"before": calibration_figures(apply_temperature(test_views[name], 1.0), y_test),
                     "after": calibration_figures(test_p, y_test)},
            "val": {"before": calibration_figures(apply_temperature(val_views[name], 1.0), y_val),
                    "after": calibration_figures(val_p, y_val)}}
        confidence, correct = _confidence_and_correct(test_p, y_test)
        abstention[name] = {"certificate": certificate.to_dict(),
                            "test": selective_figures(confidence, correct, certificate.threshold, certificate.certified),
                            "oracle": oracle_coverage(confidence, correct, decide.target_accuracy)}
    return Calibration(temperatures,
                       {"schema": CALIBRATION_SCHEMA, "tasks": settings,
                        "decide": {"target_accuracy": decide.target_accuracy, "delta": decide.delta}},
                       {"calibration": calibration, "abstention": abstention})


def quantification_block(probs: np.ndarray, labels: np.ndarray, n_classes: int) -> dict:
    """What a QC station needs to correct class fractions for the model's own confusions
    (core/quantify.py): per true class of the val images, the mean calibrated probability vector
    (probabilistic adjusted classify-and-count) and the argmax confusion counts, with the counts."""
    keep = labels != IGNORE_INDEX
    probs, labels = probs[keep], labels[keep]
    mean_p = np.zeros((n_classes, n_classes))
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (labels, probs.argmax(axis=1)), 1)
    counts = np.bincount(labels, minlength=n_classes)
    for c in range(n_classes):
        if counts[c]:
            mean_p[c] = probs[labels == c].mean(axis=0)
    return {"fitted_on": "val: calibrated probabilities of images of groups never trained on",
            "rows": "true class, in output order", "columns": "predicted class, in output order",
            "n_per_class": counts.tolist(), "mean_probability": np.round(mean_p, 6).tolist(),
            "confusion": confusion.tolist()}


def _confidence_and_correct(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-class probability and whether the top class is right, over the images with a known label."""
    keep = labels != IGNORE_INDEX
    return probs[keep].max(axis=1), probs[keep].argmax(axis=1) == labels[keep]
