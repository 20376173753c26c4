"""k-fold stratified group cross-validation with pooled out-of-fold figures.

Every fold trains on k-1 folds (a slice of whole groups held back for validation / early
stopping) and predicts its own fold; the out-of-fold predictions of all folds are pooled into one
set of figures, next to the per-fold spread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from mscvision.core.calibration import calibration_figures
from mscvision.core.fileio import write_json_atomic
from mscvision.core.selective import oracle_coverage
from mscvision.core.tasks import IGNORE_INDEX
from mscvision.core.metrics import classification_metrics
from mscvision.core.split_check import SplitCounts, check_splits, count_split, mark_estimable
from mscvision.core.splits import stratification_key, stratified_group_folds, task_labels, train_val_folds
from mscvision.training.config import RunConfig, save_config
from mscvision.training.dataset_setup import Labelled, load_labelled, report_split
from mscvision.training.fit import train
from mscvision.training.run_files import new_run_dir

SPREAD_KEYS = ("weighted_f1", "balanced_accuracy", "macro_f1")
POOLED_KEYS = {"test": "pooled", "test_tta": "pooled_tta"}  # a fold's metrics block → its pooled key
SETUP_NAMES = {"test": "plain", "test_tta": "tta"}  # → the report's "deployed"


def fold_splits(key: np.ndarray, groups: np.ndarray, k: int, seed: int, val_fraction: float,
                protect: np.ndarray | None = None) -> list[np.ndarray]:
    """Per fold, 'train' / 'val' / 'test' for every row; groups never straddle sides.

    ``protect`` (per row, one column per task): the classes the splitters keep on both sides
    (``core/splits.py`` says what is guaranteed); default ``key``.
    """
    fold_of = stratified_group_folds(key, groups, k, seed, protect)
    inner_k = max(3, round(1 / max(val_fraction, 1e-3)))  # at most one inner fold per remaining group (below)
    splits = []
    for fold in range(k):
        split = np.where(fold_of == fold, "test", "train").astype("<U5")
        rest = np.flatnonzero(fold_of != fold)
        if val_fraction == 0:  # no val split (nor calibration slice): every other fold trains (select: last)
            splits.append(split)
            continue
        inner = train_val_folds(key[rest], groups[rest], min(inner_k, len(np.unique(groups[rest]))), seed + 1 + fold,
                                None if protect is None else protect[rest])
        split[rest[inner == 0]] = "val"
        splits.append(split)
    return splits


@dataclass(frozen=True)
class CheckedFolds:
    labelled: Labelled
    splits: list[np.ndarray]  # per fold, train / val / test per row
    counts: list[SplitCounts]  # per fold, images and groups per task, class and side
    warnings: list[str]  # held-out figures (per fold) that cannot be estimated; thinly trained classes


def check_folds(config: RunConfig, k: int) -> CheckedFolds:
    """The k folds, checked before any fold trains: a class untrained in some fold (or living in a
    single group) is refused with DataError (exit 2) naming it, its groups and the fixes."""
    labelled = load_labelled(config)
    groups = np.asarray(labelled.manifest.groups)
    splits = fold_splits(stratification_key(labelled.targets), groups, k, config.data.split_seed,
                         config.held_out_val_fraction, protect=task_labels(labelled.targets))
    counts = [count_split(labelled.tasks, labelled.targets, groups, split, fold=str(fold))
              for fold, split in enumerate(splits)]
    return CheckedFolds(labelled, splits, counts, check_splits(counts, computed=True))


def cross_validate(config: RunConfig, k: int = 5) -> dict:
    checked = check_folds(config, k)
    cv_dir = new_run_dir(config)
    print(f"cross-validation directory: {cv_dir}", flush=True)
    save_config(config, cv_dir / "config.yaml")
    report_split(checked.counts, checked.warnings, cv_dir)
    labelled = checked.labelled
    groups = np.asarray(labelled.manifest.groups)
    setups = ("test", "test_tta") if config.trainer.tta else ("test",)
    oof = {s: {t.name: np.full((len(groups), t.num_classes), np.nan) for t in labelled.tasks}
           for s in (*setups, "uncalibrated")}
    thresholds = {t.name: np.full(len(groups), np.inf) for t in labelled.tasks}  # each row's own fold's
    folds = []
    for fold, split in enumerate(checked.splits):
        started = time.perf_counter()
        fold_dir = cv_dir / f"fold{fold}"
        fold_dir.mkdir()
        result = train(config, run_dir=fold_dir, split=split)
        for setup, fold_probs in (("test", result.test_probs), ("test_tta", result.test_tta_probs),
                                  ("uncalibrated", result.test_uncalibrated_probs)):
            for task, probs in (fold_probs or {}).items():
                oof[setup][task][result.test_rows] = probs
        for task, block in result.metrics.get("abstention", {}).items():
            certificate = block["certificate"]
            thresholds[task][result.test_rows] = certificate["threshold"] if certificate["certified"] else np.inf
        folds.append({"fold": fold, "minutes": round((time.perf_counter() - started) / 60, 2),
                      "n_test": int(len(result.test_rows)), "n_groups_test": int(len(set(groups[split == "test"]))),
                      **{setup: result.metrics[setup] for setup in setups},
                      **{key: result.metrics[key] for key in ("calibration", "abstention") if key in result.metrics}})
        print(f"fold {fold}: " + "; ".join(f"{setup} {t} wF1 {m['weighted_f1']:.3f} bAcc {m['balanced_accuracy']:.3f}"
                                           for setup in setups for t, m in result.metrics[setup].items())
              + f" ({folds[-1]['minutes']:.1f} min)", flush=True)
    pooled = {s: {t.name: pooled_metrics(labelled.targets[t.name], oof[s][t.name], t.classes)
                  for t in labelled.tasks} for s in setups}
    for s in setups:  # a pooled class resting on one group is still one group's figure
        mark_estimable(pooled[s], pooled_counts(labelled, groups, oof[s]), "test")
    deployed = config.deployed_test_key
    if all("abstention" in f for f in folds):
        pooled[deployed] = {t.name: {**pooled[deployed][t.name],
                                     **pooled_trust(labelled.targets[t.name], oof["uncalibrated"][t.name],
                                                    oof[deployed][t.name], thresholds[t.name],
                                                    config.decide.target_accuracy)} for t in labelled.tasks}
    report = {"schema": "mscvision.crossval/2", "k": k, "seed": config.data.split_seed,
              "setup": "pooled = all out-of-fold predictions; 'pooled' is the plain single pass, 'pooled_tta' "
                       "the dihedral x8 TTA; 'deployed' names the one the exported model runs (export.tta)",
              "deployed": SETUP_NAMES[deployed],
              **{POOLED_KEYS[s]: figures for s, figures in pooled.items()},
              "spread": _spread(folds, [t.name for t in labelled.tasks], deployed), "folds": folds,
              "minutes_per_fold": [f["minutes"] for f in folds]}
    write_json_atomic(cv_dir / "crossval.json", report)
    report["dir"] = str(cv_dir)
    return report


def pooled_metrics(targets: np.ndarray, oof_probs: np.ndarray, classes: tuple[str, ...]) -> dict:
    """Figures over the rows that have an out-of-fold prediction. Rows left NaN (images skipped as
    unreadable in their fold) are left out: argmax would turn them into class-0 predictions."""
    predicted = ~np.isnan(oof_probs).any(axis=1)
    return classification_metrics(targets[predicted], oof_probs[predicted].argmax(axis=1), classes)


def pooled_trust(targets: np.ndarray, uncalibrated: np.ndarray, calibrated: np.ndarray, thresholds: np.ndarray,
                 target_accuracy: float) -> dict:
    """Pooled out-of-fold calibration (before / after each fold's temperature) and abstention: each
    image judged by its own fold's certified threshold (inf where the fold certified none), and the
    oracle coverage of the pooled calibrated probabilities."""
    keep = ~np.isnan(calibrated).any(axis=1) & (targets != IGNORE_INDEX)
    y, p, limit = targets[keep], calibrated[keep], thresholds[keep]
    confidence, correct = p.max(axis=1), p.argmax(axis=1) == y
    labelled = confidence >= limit
    return {"calibration": {"before": calibration_figures(uncalibrated[keep], y), "after": calibration_figures(p, y)},
            "abstention": {"coverage": float(labelled.mean()) if len(y) else 0.0,
                           "selective_accuracy": float(correct[labelled].mean()) if labelled.any() else None,
                           "n": int(len(y)), "n_labelled": int(labelled.sum()),
                           "rule": "each image against its own fold's certified threshold",
                           "oracle": oracle_coverage(confidence, correct, target_accuracy)}}


def pooled_counts(labelled: Labelled, groups: np.ndarray, oof: dict[str, np.ndarray]) -> SplitCounts:
    """Images and groups per class among the rows with an out-of-fold prediction (all are 'test')."""
    predicted = np.flatnonzero(~np.isnan(next(iter(oof.values()))).any(axis=1))
    return count_split(labelled.tasks, labelled.targets, groups, np.full(len(groups), "test"), predicted, "pooled")


def _spread(folds: list[dict], tasks: list[str], setup_key: str) -> dict:
    """Min / max / mean / std over folds of the deployed setup's test figures."""
    out = {}
    for task in tasks:
        out[task] = {}
        for key in SPREAD_KEYS:
            values = np.array([f[setup_key][task][key] for f in folds])
            out[task][key] = {"min": float(values.min()), "max": float(values.max()),
                              "mean": float(values.mean()), "std": float(values.std())}
    return out


def print_report(report: dict) -> None:
    headline = "pooled_tta" if report["deployed"] == "tta" else "pooled"
    print(f"\n{report['k']}-fold stratified group cross-validation → {report['dir']}")
    print(f"headline: {headline}, the setup the exported model runs (export.tta)")
    for task, m in report[headline].items():
        s = report["spread"][task]
        for key in POOLED_KEYS.values():
            if key in report:
                o = report[key][task]
                print(f"[{task}] {key} out of fold: weighted F1 {o['weighted_f1']:.3f}, balanced accuracy "
                      f"{o['balanced_accuracy']:.3f}, macro F1 {o['macro_f1']:.3f} (n={o['n']})")
        if "calibration" in m:
            before, after, abstain = m["calibration"]["before"], m["calibration"]["after"], m["abstention"]
            print(f"  calibration (pooled): ECE {before['ece']:.4f} → {after['ece']:.4f}, NLL {before['nll']:.3f} → "
                  f"{after['nll']:.3f}, Brier {before['brier']:.4f} → {after['brier']:.4f}")
            accuracy = abstain["selective_accuracy"]
            print(f"  abstention (pooled, each fold's threshold): coverage {abstain['coverage']:.3f}, selective "
                  f"accuracy {'—' if accuracy is None else f'{accuracy:.4f}'}; oracle coverage "
                  f"{abstain['oracle']['coverage']:.3f}")
        print(f"  per fold: wF1 {s['weighted_f1']['min']:.3f}–{s['weighted_f1']['max']:.3f}, bAcc "
              f"{s['balanced_accuracy']['min']:.3f}–{s['balanced_accuracy']['max']:.3f}; minutes/fold "
              f"{', '.join(f'{x:.1f}' for x in report['minutes_per_fold'])}")
        print(f"  {'class':22s} {'n':>5s} {'groups':>6s} {'F1':>6s} {'recall':>7s}")
        for name, c in sorted(m["per_class"].items(), key=lambda kv: -kv[1]["support"]):
            note = "" if c.get("estimable", True) else f"  not estimable: {c['note']}"
            print(f"  {name:22s} {c['support']:5d} {c.get('groups', 0):6d} {c['f1']:6.3f} {c['recall']:7.3f}{note}")


def print_checked_folds(checked: CheckedFolds) -> None:
    """What ``cross_validate.py --check-only`` prints: the warnings and the per-fold split table."""
    report_split(checked.counts, checked.warnings, None)
    print(f"split check passed: every class has training images in each of the {len(checked.splits)} folds")
