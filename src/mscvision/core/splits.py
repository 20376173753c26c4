"""Group-aware splits: stratified by label, a group (donor, lot, well, track) never straddles two sides.

The fold assignment is the greedy scheme of scikit-learn's ``StratifiedGroupKFold`` in numpy:
groups in random order (seeded), most class-skewed first, each to the fold whose class
proportions it evens out most. On top of it, small classes are kept on both sides where the
groups allow (see ``stratified_group_folds`` and ``train_val_test_split`` for what is guaranteed);
where they do not, the split check (``core/split_check.py``) refuses or warns before training.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mscvision.core.errors import DataError

# (group, classes of that group, fold of every placed group or -1) -> folds the group may go to
FoldRule = Callable[[int, np.ndarray, np.ndarray], np.ndarray]


def stratified_group_folds(labels: np.ndarray, groups: np.ndarray, k: int, seed: int,
                           protect: np.ndarray | None = None) -> np.ndarray:
    """Fold index (0..k-1) per sample. ``labels`` are ints (any stratification key), ``groups`` any hashable.

    Guarantee: every class of ``protect`` (per sample, one column per task, -1 = unknown; default
    ``labels``) that has >= 2 groups spans >= 2 folds, so in k-fold cross-validation every fold
    trains on it. The one exception: a group holding several small classes whose last groups would
    need different folds; the split check then names the class.
    """
    membership, group_of = _membership(labels, groups, protect)
    return _assign(labels, group_of, k, seed, _spread_rule(membership, k))[group_of]


def train_val_test_split(labels: np.ndarray, groups: np.ndarray, val: float, test: float,
                         seed: int, protect: np.ndarray | None = None) -> np.ndarray:
    """'train' / 'val' / 'test' per sample, by whole groups, stratified; fractions are approximate.

    Guarantee (``protect`` as in ``stratified_group_folds``): a class with >= 2 groups has a group
    in train and one in test; with >= 3 groups (and ``val`` > 0) one in val too. Where one group
    holds several small classes that need different sides, train wins over test over val. A
    class in a single group goes to train; it cannot also be tested, which the split check refuses.
    """
    n_groups = len(np.unique(groups))
    k = min(n_groups, 20)
    if n_groups < 3:
        raise DataError(f"only {n_groups} group(s): a train/val/test split needs at least 3. Fix: add "
                        "groups (donors, wells) or give every image its own group.")
    n_test = max(1, round(test * k))
    n_val = max(1, round(val * k)) if val > 0 else 0
    side_of_fold = np.array(["test"] * n_test + ["val"] * n_val + ["train"] * (k - n_test - n_val))
    membership, group_of = _membership(labels, groups, protect)
    priority = ("train", "test", "val") if n_val else ("train", "test")
    folds = _assign(labels, group_of, k, seed, _sides_rule(membership, side_of_fold, priority))
    return side_of_fold[folds][group_of].astype(str)


def train_val_folds(labels: np.ndarray, groups: np.ndarray, k: int, seed: int,
                    protect: np.ndarray | None = None) -> np.ndarray:
    """Fold 0 of k is validation, the rest trains: a class keeps a training group first (a class
    with one group here trains and is absent from validation), then one in validation if it has 2."""
    membership, group_of = _membership(labels, groups, protect)
    side_of_fold = np.array(["val"] + ["train"] * (k - 1))
    return _assign(labels, group_of, k, seed, _sides_rule(membership, side_of_fold, ("train", "val")))[group_of]


def _membership(labels: np.ndarray, groups: np.ndarray, protect: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(groups x protected classes) bool, True where the group holds that class; and each sample's group."""
    _, group_of = np.unique(np.asarray(groups), return_inverse=True)
    protect = np.asarray(labels if protect is None else protect)
    protect = protect.reshape(len(group_of), -1)
    columns = []
    for column in protect.T:
        known = column >= 0
        classes, class_of = np.unique(column[known], return_inverse=True)
        present = np.zeros((group_of.max() + 1, len(classes)), bool)
        present[group_of[known], class_of] = True
        columns.append(present)
    return np.concatenate(columns, axis=1), group_of


def _assign(labels: np.ndarray, group_of: np.ndarray, k: int, seed: int, allowed: FoldRule) -> np.ndarray:
    """Fold per group: the greedy stratified assignment, each group limited to the folds ``allowed`` gives."""
    n_groups = group_of.max() + 1
    if n_groups < k:
        raise DataError(f"{n_groups} groups cannot fill {k} folds. Fix: use fewer folds or more groups.")
    classes, label_of = np.unique(np.asarray(labels), return_inverse=True)
    counts = np.zeros((n_groups, len(classes)))
    np.add.at(counts, (group_of, label_of), 1)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_groups)
    order = order[np.argsort(-np.std(counts[order], axis=1), kind="stable")]
    fold_counts = np.zeros((k, len(classes)))
    fold_of_group = np.full(n_groups, -1, np.int64)
    totals = counts.sum(axis=0)
    for g in order:
        fold_of_group[g] = _best_fold(fold_counts, counts[g], totals, allowed(g, fold_of_group))
        fold_counts[fold_of_group[g]] += counts[g]
    return fold_of_group


def _best_fold(fold_counts: np.ndarray, group_counts: np.ndarray, totals: np.ndarray,
               candidates: np.ndarray) -> int:
    """The fold where adding this group leaves class proportions most even; ties go to the smallest fold."""
    def cost(fold: int) -> tuple[float, float]:
        trial = fold_counts.copy()
        trial[fold] += group_counts
        spread = np.mean(np.std(trial / np.maximum(totals, 1), axis=0))
        return round(float(spread), 12), float(fold_counts[fold].sum())

    return min((int(f) for f in candidates), key=cost)


def _spread_rule(membership: np.ndarray, k: int) -> FoldRule:
    """The last group of a class whose placed groups all sit in one fold may not join that fold."""
    n_groups_of = membership.sum(axis=0)

    def allowed(g: int, fold_of_group: np.ndarray) -> np.ndarray:
        banned = set()
        for c in np.flatnonzero(membership[g]):
            holders = membership[:, c]
            if n_groups_of[c] < 2 or (holders & (fold_of_group < 0)).sum() > 1:
                continue
            placed = np.unique(fold_of_group[holders & (fold_of_group >= 0)])
            if len(placed) == 1:
                banned.add(int(placed[0]))
        free = np.array([f for f in range(k) if f not in banned])
        return free if len(free) else np.arange(k)

    return allowed


def _sides_rule(membership: np.ndarray, side_of_fold: np.ndarray, priority: tuple[str, ...]) -> FoldRule:
    """A class needs a group on each of its first min(groups, len(priority)) sides; once its unplaced
    groups are no more than the sides it still lacks, the next one must go to a lacking side."""
    n_groups_of = membership.sum(axis=0)

    def allowed(g: int, fold_of_group: np.ndarray) -> np.ndarray:
        needs = []
        for c in np.flatnonzero(membership[g]):
            holders = membership[:, c]
            covered = set(side_of_fold[fold_of_group[holders & (fold_of_group >= 0)]])
            lacking = [s for s in priority[:n_groups_of[c]] if s not in covered]
            if lacking and (holders & (fold_of_group < 0)).sum() <= len(lacking):
                needs.append(set(lacking))
        if not needs:
            return np.arange(len(side_of_fold))
        sides = set.intersection(*needs) or {next(s for s in priority if any(s in n for n in needs))}
        return np.flatnonzero(np.isin(side_of_fold, sorted(sides)))

    return allowed


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


def task_labels(targets: dict[str, np.ndarray]) -> np.ndarray:
    """(samples x tasks) class indices, -1 unknown: the ``protect`` argument of the splitters."""
    return np.stack(list(targets.values()), axis=1)
