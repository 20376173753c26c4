"""Classification figures shared by training evaluation and the runtime (never accuracy alone)."""

from __future__ import annotations

import numpy as np

from mscvision.core.tasks import IGNORE_INDEX


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows = true class, columns = predicted; samples with an unknown label are left out."""
    keep = np.asarray(y_true) != IGNORE_INDEX
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(y_true)[keep], np.asarray(y_pred)[keep]), 1)
    return cm


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...] | list[str]) -> dict:
    """The metrics.json block for one task: accuracy, balanced accuracy, macro/weighted F1, per class.

    Balanced accuracy is the mean recall over classes present in ``y_true`` (scikit-learn's rule).
    """
    return metrics_from_confusion(confusion_matrix(y_true, y_pred, len(classes)), classes)


def metrics_from_confusion(cm: np.ndarray, classes: tuple[str, ...] | list[str]) -> dict:
    """``classification_metrics`` of the images a confusion matrix counts (the one copy of the
    definitions: a bootstrap sums per-group matrices and scores each draw here, without the images)."""
    cm = np.asarray(cm, dtype=np.int64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm).astype(float)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    n = int(support.sum())
    present = support > 0
    return {
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "weighted_f1": float((f1 * support).sum() / n) if n else 0.0,
        "n": n,
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
    }
