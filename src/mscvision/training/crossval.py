"""k-fold stratified group cross-validation with pooled out-of-fold figures.

Every fold trains on k-1 folds (a slice of whole groups held back for validation / early
stopping) and predicts its own fold; the out-of-fold predictions of all folds are pooled into one
set of figures, next to the per-fold spread.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from mscvision.core.fileio import write_json_atomic
from mscvision.core.metrics import classification_metrics
from mscvision.core.splits import stratification_key, stratified_group_folds
from mscvision.training.config import RunConfig, save_config
from mscvision.training.dataset_setup import load_labelled
from mscvision.training.fit import new_run_dir, train

SPREAD_KEYS = ("weighted_f1", "balanced_accuracy", "macro_f1")


def fold_splits(key: np.ndarray, groups: np.ndarray, k: int, seed: int, val_fraction: float) -> list[np.ndarray]:
    """Per fold, 'train' / 'val' / 'test' for every row; groups never straddle sides."""
    fold_of = stratified_group_folds(key, groups, k, seed)
    inner_k = max(3, round(1 / max(val_fraction, 1e-3)))
    splits = []
    for fold in range(k):
        split = np.where(fold_of == fold, "test", "train").astype("<U5")
        rest = np.flatnonzero(fold_of != fold)
        inner = stratified_group_folds(key[rest], groups[rest], inner_k, seed + 1 + fold)
        split[rest[inner == 0]] = "val"
        splits.append(split)
    return splits


def cross_validate(config: RunConfig, k: int = 5) -> dict:
    cv_dir = new_run_dir(config)
    save_config(config, cv_dir / "config.yaml")
    labelled = load_labelled(config)
    key = stratification_key(labelled.targets)
    groups = np.asarray(labelled.manifest.groups)
    oof = {t.name: np.full((len(groups), t.num_classes), np.nan) for t in labelled.tasks}
    folds = []
    for fold, split in enumerate(fold_splits(key, groups, k, config.data.split_seed, config.data.val_fraction)):
        started = time.perf_counter()
        fold_dir = cv_dir / f"fold{fold}"
        fold_dir.mkdir()
        result = train(config, run_dir=fold_dir, split=split)
        for task, probs in result.test_probs.items():
            oof[task][result.test_rows] = probs
        folds.append({"fold": fold, "minutes": round((time.perf_counter() - started) / 60, 2),
                      "n_test": int(len(result.test_rows)), "n_groups_test": int(len(set(groups[split == "test"]))),
                      "test": result.metrics["test"], **({"test_tta": result.metrics["test_tta"]} if "test_tta" in result.metrics else {})})
        print(f"fold {fold}: " + ", ".join(f"{t} wF1 {m['weighted_f1']:.3f} bAcc {m['balanced_accuracy']:.3f}"
                                           for t, m in result.metrics["test"].items())
              + f" ({folds[-1]['minutes']:.1f} min)", flush=True)
    report = {"schema": "mscvision.crossval/1", "k": k, "seed": config.data.split_seed,
              "setup": "plain single pass (what a station runs); pooled = all out-of-fold predictions",
              "pooled": {t.name: classification_metrics(labelled.targets[t.name], oof[t.name].argmax(axis=1), t.classes)
                         for t in labelled.tasks},
              "spread": _spread(folds, [t.name for t in labelled.tasks]), "folds": folds,
              "minutes_per_fold": [f["minutes"] for f in folds]}
    write_json_atomic(cv_dir / "crossval.json", report)
    report["dir"] = str(cv_dir)
    return report


def _spread(folds: list[dict], tasks: list[str]) -> dict:
    out = {}
    for task in tasks:
        out[task] = {}
        for key in SPREAD_KEYS:
            values = np.array([f["test"][task][key] for f in folds])
            out[task][key] = {"min": float(values.min()), "max": float(values.max()),
                              "mean": float(values.mean()), "std": float(values.std())}
    return out


def print_report(report: dict) -> None:
    print(f"\n{report['k']}-fold stratified group cross-validation ({report['setup']})  → {report['dir']}")
    for task, m in report["pooled"].items():
        s = report["spread"][task]
        print(f"[{task}] pooled out-of-fold: weighted F1 {m['weighted_f1']:.3f}, balanced accuracy "
              f"{m['balanced_accuracy']:.3f}, macro F1 {m['macro_f1']:.3f} (n={m['n']})")
        print(f"  per fold: wF1 {s['weighted_f1']['min']:.3f}–{s['weighted_f1']['max']:.3f}, bAcc "
              f"{s['balanced_accuracy']['min']:.3f}–{s['balanced_accuracy']['max']:.3f}; minutes/fold "
              f"{', '.join(f'{x:.1f}' for x in report['minutes_per_fold'])}")
        print(f"  {'class':22s} {'n':>5s} {'F1':>6s} {'recall':>7s}")
        for name, c in sorted(m["per_class"].items(), key=lambda kv: -kv[1]["support"]):
            print(f"  {name:22s} {c['support']:5d} {c['f1']:6.3f} {c['recall']:7.3f}")
