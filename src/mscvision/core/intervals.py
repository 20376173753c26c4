"""Confidence intervals for classification figures by a bootstrap that resamples GROUPS, not images.

Tiles of one well, crops of one track or fields of one donor are not independent: they share the
staining, the focus and the biology, so a model's errors come in clusters. Resampling images as if
they were independent pretends there are as many independent looks as images and gives intervals
that are too narrow; resampling whole groups with replacement keeps each cluster together, so the
interval is as wide as the number of independent units allows (with one group per image it is the
ordinary image bootstrap).

Fast: each group's confusion matrix is counted once; a bootstrap draw is a vector of how many
times each group was drawn, and its confusion matrix is the count-weighted sum of the groups'
matrices. Every draw is scored by ``core.metrics.metrics_from_confusion`` (the one copy of the
metric definitions), so the intervals are of exactly the figures ``classification_metrics`` reports.
"""

from __future__ import annotations

import numpy as np

from mscvision.core.metrics import metrics_from_confusion
from mscvision.core.tasks import IGNORE_INDEX

SUMMARY_FIGURES = ("balanced_accuracy", "macro_f1", "weighted_f1", "accuracy")
CLASS_FIGURES = ("precision", "recall", "f1")


def group_bootstrap(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray | list,
                    classes: tuple[str, ...] | list[str], n_boot: int = 1000, seed: int = 0,
                    level: float = 0.95) -> dict:
    """Percentile intervals (``level``, two-sided) over ``n_boot`` draws of the groups with replacement.

    Images with an unknown label (``IGNORE_INDEX``) are left out, as ``classification_metrics`` does.
    Returns ``{"method", "level", "n_boot", "seed", "n_groups", "n_images", "intervals", "reason"}``:
    ``intervals`` maps each of SUMMARY_FIGURES to ``[low, high]`` and ``per_class`` to
    ``{class: {precision|recall|f1: [low, high] or None}}``. A per-class figure is taken only over
    the draws where it is defined (recall and F1: the class occurs; precision: it is predicted), and
    ``per_class_draws`` says how many those were; None when it never is. With fewer than 2 groups
    there is no interval: ``intervals`` is None and ``reason`` says why.
    """
    if not 0 < level < 1:
        raise ValueError(f"level {level} must be in (0, 1)")
    if n_boot < 1:
        raise ValueError(f"n_boot {n_boot} must be >= 1")
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    groups = np.asarray(groups, dtype=object)
    if not (len(y_true) == len(y_pred) == len(groups)):
        raise ValueError(f"{len(y_true)} labels, {len(y_pred)} predictions and {len(groups)} groups: not one per image")
    keep = y_true != IGNORE_INDEX
    names, group_index = np.unique(groups[keep].astype(str), return_inverse=True)
    result = {"method": "percentile bootstrap resampling groups with replacement", "level": level,
              "n_boot": n_boot, "seed": seed, "n_groups": len(names), "n_images": int(keep.sum()),
              "intervals": None, "reason": None}
    if len(names) < 2:
        result["reason"] = (f"{len(names)} group(s) with a known label: an interval needs at least 2 independent "
                            "groups (one group's images are not independent looks at the model)")
        return result
    per_group = group_confusions(y_true[keep], y_pred[keep], group_index, len(names), len(classes))
    draws = np.random.default_rng(seed).multinomial(len(names), np.full(len(names), 1 / len(names)), size=n_boot)
    matrices = np.einsum("bg,gij->bij", draws, per_group)
    scored = [metrics_from_confusion(cm, classes) for cm in matrices]
    result["intervals"] = _intervals(scored, matrices, classes, level)
    return result


def group_confusions(y_true: np.ndarray, y_pred: np.ndarray, group_index: np.ndarray, n_groups: int,
                     n_classes: int) -> np.ndarray:
    """(groups, classes, classes): each group's confusion matrix (rows true, columns predicted), the
    counting of ``metrics.confusion_matrix`` with the group as a third index (one pass, not one per group)."""
    out = np.zeros((n_groups, n_classes, n_classes), np.int64)
    np.add.at(out, (group_index, y_true, y_pred), 1)
    return out


def _intervals(scored: list[dict], matrices: np.ndarray, classes, level: float) -> dict:
    tail = 100 * (1 - level) / 2
    bounds = (tail, 100 - tail)

    def interval(values: np.ndarray) -> list[float] | None:
        return [float(v) for v in np.percentile(values, bounds)] if len(values) else None

    support = matrices.sum(axis=2)  # (draws, classes): true counts
    predicted = matrices.sum(axis=1)
    out: dict = {name: interval(np.array([s[name] for s in scored])) for name in SUMMARY_FIGURES}
    out["per_class"], out["per_class_draws"] = {}, {}
    for i, cls in enumerate(classes):
        defined = {"precision": predicted[:, i] > 0, "recall": support[:, i] > 0,
                   "f1": (support[:, i] > 0) | (predicted[:, i] > 0)}
        values = {f: np.array([s["per_class"][cls][f] for s in scored]) for f in CLASS_FIGURES}
        out["per_class"][cls] = {f: interval(values[f][defined[f]]) for f in CLASS_FIGURES}
        out["per_class_draws"][cls] = {f: int(defined[f].sum()) for f in CLASS_FIGURES}
    return out


def paired_group_bootstrap(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, groups: np.ndarray | list,
                           classes: tuple[str, ...] | list[str], n_boot: int = 1000, seed: int = 0,
                           level: float = 0.95) -> dict:
    """Percentile intervals of the DIFFERENCE b − a of two models' figures on the same images.

    Paired: each draw resamples the groups once and scores both models on that same draw, so what
    the two share (the hard groups, the easy ones) cancels, and the interval is of the change, not
    of two independent noises added up. Returns ``{"method", "level", "n_boot", "seed", "n_groups",
    "n_images", "difference", "intervals", "b_better", "reason"}``: ``difference`` is b − a on all
    images for each of SUMMARY_FIGURES (and ``per_class`` recall and F1), ``intervals`` their
    ``[low, high]``, ``b_better`` the share of draws in which b − a > 0. Fewer than 2 groups: no
    interval, ``reason`` says why.
    """
    y_true, pred_a, pred_b = np.asarray(y_true), np.asarray(pred_a), np.asarray(pred_b)
    groups = np.asarray(groups, dtype=object)
    if not (len(y_true) == len(pred_a) == len(pred_b) == len(groups)):
        raise ValueError("y_true, the two predictions and the groups must have one entry per image")
    keep = y_true != IGNORE_INDEX
    names, group_index = np.unique(groups[keep].astype(str), return_inverse=True)
    full_a = metrics_from_confusion(_confusion(y_true[keep], pred_a[keep], len(classes)), classes)
    full_b = metrics_from_confusion(_confusion(y_true[keep], pred_b[keep], len(classes)), classes)
    result = {"method": "paired percentile bootstrap: the same resampled groups score both models",
              "level": level, "n_boot": n_boot, "seed": seed, "n_groups": len(names), "n_images": int(keep.sum()),
              "difference": _differences(full_a, full_b, classes), "intervals": None, "b_better": None,
              "reason": None}
    if len(names) < 2:
        result["reason"] = f"{len(names)} group(s): an interval of the difference needs at least 2 independent groups"
        return result
    cm_a = group_confusions(y_true[keep], pred_a[keep], group_index, len(names), len(classes))
    cm_b = group_confusions(y_true[keep], pred_b[keep], group_index, len(names), len(classes))
    draws = np.random.default_rng(seed).multinomial(len(names), np.full(len(names), 1 / len(names)), size=n_boot)
    drawn_a, drawn_b = np.einsum("bg,gij->bij", draws, cm_a), np.einsum("bg,gij->bij", draws, cm_b)
    diffs = [_differences(metrics_from_confusion(a, classes), metrics_from_confusion(b, classes), classes)
             for a, b in zip(drawn_a, drawn_b)]
    present = drawn_a.sum(axis=2) > 0  # (draws, classes): the true counts are the same for both models
    tail = 100 * (1 - level) / 2

    def summarise(values: np.ndarray) -> list[float] | None:
        return [float(x) for x in np.percentile(values, (tail, 100 - tail))] if len(values) else None

    result["intervals"] = {name: summarise(np.array([d[name] for d in diffs])) for name in SUMMARY_FIGURES}
    result["b_better"] = {name: float(np.mean([d[name] > 0 for d in diffs])) for name in SUMMARY_FIGURES}
    # a class's difference only over the draws that hold it (absent, both models score 0: no evidence)
    result["intervals"]["per_class"] = {
        cls: {f: summarise(np.array([d["per_class"][cls][f] for d in diffs])[present[:, i]]) for f in ("recall", "f1")}
        for i, cls in enumerate(classes)}
    return result


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    return group_confusions(y_true, y_pred, np.zeros(len(y_true), np.int64), 1, n_classes)[0]


def _differences(a: dict, b: dict, classes) -> dict:
    out = {name: b[name] - a[name] for name in SUMMARY_FIGURES}
    out["per_class"] = {cls: {f: b["per_class"][cls][f] - a["per_class"][cls][f] for f in ("recall", "f1")}
                        for cls in classes}
    return out
