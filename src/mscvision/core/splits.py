"""Group-aware splits: stratified by label, a group (donor, lot, well, track) never straddles two sides.

The fold assignment is the greedy scheme of scikit-learn's ``StratifiedGroupKFold`` in numpy:
groups in random order (seeded), most class-skewed first, each to the fold whose class
proportions it evens out most.
"""

from __future__ import annotations

import numpy as np

from mscvision.core.errors import DataError


def stratified_group_folds(labels: np.ndarray, groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index (0..k-1) per sample. ``labels`` are ints (any stratification key), ``groups`` any hashable."""
    group_ids, group_of = np.unique(np.asarray(groups), return_inverse=True)
    if len(group_ids) < k:
        raise DataError(f"{len(group_ids)} groups cannot fill {k} folds. Fix: use fewer folds or more groups.")
    classes, label_of = np.unique(np.asarray(labels), return_inverse=True)
    counts = np.zeros((len(group_ids), len(classes)))
    np.add.at(counts, (group_of, label_of), 1)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(group_ids))
    order = order[np.argsort(-np.std(counts[order], axis=1), kind="stable")]
    fold_counts = np.zeros((k, len(classes)))
    fold_of_group = np.empty(len(group_ids), np.int64)
    totals = counts.sum(axis=0)
    for g in order:
        fold_of_group[g] = _best_fold(fold_counts, counts[g], totals)
        fold_counts[fold_of_group[g]] += counts[g]
    return fold_of_group[group_of]


def _best_fold(fold_counts: np.ndarray, group_counts: np.ndarray, totals: np.ndarray) -> int:
    """The fold where adding this group leaves class proportions most even; ties go to the smallest fold."""
    def cost(fold: int) -> tuple[float, float]:
        trial = fold_counts.copy()
        trial[fold] += group_counts
        spread = np.mean(np.std(trial / np.maximum(totals, 1), axis=0))
        return round(float(spread), 12), float(fold_counts[fold].sum())

    return min(range(len(fold_counts)), key=cost)


def train_val_test_split(labels: np.ndarray, groups: np.ndarray, val: float, test: float,
                         seed: int) -> np.ndarray:
    """'train' / 'val' / 'test' per sample, by whole groups, stratified; fractions are approximate."""
    n_groups = len(np.unique(groups))
    k = min(n_groups, 20)
    if n_groups < 3:
        raise DataError(f"only {n_groups} group(s): a train/val/test split needs at least 3. Fix: add "
                        "groups (donors, wells) or give every image its own group.")
    folds = stratified_group_folds(labels, groups, k, seed)
    n_test = max(1, round(test * k))
    n_val = max(1, round(val * k)) if val > 0 else 0
    split = np.full(len(folds), "train", dtype=object)
    split[folds < n_test] = "test"
    split[(folds >= n_test) & (folds < n_test + n_val)] = "val"
    return split.astype(str)


def check_groups_disjoint(groups: np.ndarray, sides: np.ndarray) -> None:
    """Raise if any group appears on two sides: the guard every split passes through."""
    groups, sides = np.asarray(groups), np.asarray(sides)
    for g in np.unique(groups):
        if len(np.unique(sides[groups == g])) > 1:
            raise DataError(f"group {g!r} straddles the split ({sorted(set(sides[groups == g]))}). "
                            "Fix: a fixed split column must keep every group on one side.")


def stratification_key(targets: dict[str, np.ndarray]) -> np.ndarray:
    """One int per sample combining every task's label, so all tasks are balanced across folds."""
    key = np.zeros(len(next(iter(targets.values()))), np.int64)
    for values in targets.values():
        key = key * (int(values.max()) + 2) + (values + 1)
    return key
