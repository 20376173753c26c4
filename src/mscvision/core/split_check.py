"""The split check: before training, every class the model predicts has training images, and
every held-out figure that cannot be estimated (class absent from a side, or resting on one
group there: see ``held_out_note``) is known, warned and marked instead of reported as an F1 of 0 or 1.

Counted per task and class over the rows that will be used (known labels; images skipped as
unreadable left out), per side (train / val / test) and per cross-validation fold. The same
counts make the split table printed before training and written to ``split_table.csv``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from mscvision.core.errors import DataError
from mscvision.core.tasks import Task

SIDES = ("train", "val", "test")
HELD_OUT = ("val", "test")
ALL = "*"  # the task and class of the rows that count every image of a side, labelled or not
ONE_GROUP_SHARE = 0.9  # a held-out class with one group holding this share of its images rests on it
THIN_TRAIN_SHARE = 1 / 3  # a class training on less than this share of its images is warned about
TABLE_HEADER = ("fold", "task", "class", "side", "images", "groups", "note")
FIXES = ("Fix: finer groups, so that each class spans several (well or field instead of plate, "
         "donor instead of batch); fewer folds (cross-validation: --folds N); drop the class (blank its label cells "
         "or remove its rows, and leave it out of tasks.{tasks}.classes); or an explicit 'split' "
         "column in the manifest (train/val/test per row) that puts some of its groups in train.")


@dataclass(frozen=True)
class Cell:
    """One class on one side: images per group (a side holds whole groups)."""
    group_images: dict[str, int]

    @property
    def images(self) -> int:
        return sum(self.group_images.values())

    @property
    def groups(self) -> int:
        return len(self.group_images)


@dataclass(frozen=True)
class SplitCounts:
    fold: str  # "" for a single split; the fold number in cross-validation
    sides: tuple[str, ...]  # the sides this split has (no "val" with data.val_fraction 0)
    cells: dict[str, dict[str, dict[str, Cell]]]  # task -> class -> side -> Cell; ALL/ALL: every row

    def classes(self) -> list[tuple[str, str]]:
        return [(task, name) for task, by_class in self.cells.items() if task != ALL for name in by_class]

    def total(self, task: str, name: str) -> Cell:
        merged: dict[str, int] = {}
        for cell in self.cells[task][name].values():
            merged.update(cell.group_images)
        return Cell(merged)


def count_split(tasks: list[Task], targets: dict[str, np.ndarray], groups: np.ndarray, split: np.ndarray,
                rows: np.ndarray | None = None, fold: str = "") -> SplitCounts:
    """Images and groups per task, class and side over ``rows`` (default: all rows)."""
    rows = np.arange(len(split)) if rows is None else np.asarray(rows, np.int64)
    # The sides come from the whole split, not the counted rows: a side whose every image was skipped
    # as unreadable keeps its (empty) cells, so the refusal and the "absent from" notes see it lost.
    sides = tuple(s for s in SIDES if (np.asarray(split).astype(str) == s).any())
    groups, split = np.asarray(groups).astype(str)[rows], np.asarray(split).astype(str)[rows]
    cells: dict[str, dict[str, dict[str, Cell]]] = {}
    for task in tasks:
        y = np.asarray(targets[task.name])[rows]
        cells[task.name] = {name: {side: _cell(groups[(y == c) & (split == side)]) for side in sides}
                            for c, name in enumerate(task.classes)}
    cells[ALL] = {ALL: {side: _cell(groups[split == side]) for side in sides}}
    return SplitCounts(fold, sides, cells)


def _cell(groups: np.ndarray) -> Cell:
    names, counts = np.unique(groups, return_counts=True)
    return Cell({str(g): int(n) for g, n in zip(names, counts)})


def check_splits(all_counts: list[SplitCounts], computed: bool) -> list[str]:
    """Refuse (DataError, exit 2) when a class the model would predict has no training images;
    return the warnings for held-out figures that cannot be estimated.

    ``computed``: the splitter made the split (not a manifest ``split`` column). A class in a single
    group is then refused even where it landed in train: no split by group can also test it, and
    whether a run is refused must not depend on where the splitter happened to put it. A fixed
    split column that keeps such a class in train is the user's informed choice: warned only.
    """
    problems = _refusals(all_counts, computed)
    if problems:
        tasks = "|".join(sorted({task for task, _ in problems}))
        raise DataError("the split would train a model on classes it never sees, or never tests:\n  "
                        + "\n  ".join(problems.values()) + "\n" + FIXES.format(tasks=tasks))
    return held_out_warnings(all_counts) + thin_training_warnings(all_counts)


def _refusals(all_counts: list[SplitCounts], computed: bool) -> dict[tuple[str, str], str]:
    first = all_counts[0]  # every split of a run covers the same rows: totals are the same
    problems = {}
    for task, name in first.classes():
        total = first.total(task, name)
        untrained = [c.fold for c in all_counts if c.cells[task][name]["train"].images == 0]
        what = f"task {task!r}: class {name!r}"
        if not total.images:
            problems[task, name] = f"{what} has no images at all"
        elif computed and total.groups == 1:
            problems[task, name] = (f"{what} lives in a single group ({describe_groups(total)}): a split "
                                    "by group cannot both train on it and test it")
        elif untrained:
            where = f" in fold(s) {', '.join(untrained)}" if untrained != [""] else ""
            problems[task, name] = (f"{what} has no training images{where} ({describe_groups(total)}): "
                                    "a model cannot learn a class it never sees")
    return problems


def describe_groups(cell: Cell, most: int = 5) -> str:
    """'99 images in 7 group(s): W1 (57), W2 (31), ...' — largest first, ``most`` named."""
    named = sorted(cell.group_images.items(), key=lambda kv: (-kv[1], kv[0]))
    listed = ", ".join(f"{g} ({n})" for g, n in named[:most])
    more = f", +{len(named) - most} more" if len(named) > most else ""
    return f"{cell.images} images in {cell.groups} group(s): {listed}{more}"


def held_out_note(cell: Cell, side: str) -> str | None:
    """Why a class's figures on a held-out side cannot be estimated, or None when they can: absent,
    or resting on one group (the only one, or one holding >= ONE_GROUP_SHARE of its images there:
    the figure then measures that group, not the class)."""
    if cell.images == 0:
        return f"absent from {side}"
    if cell.groups == 1:
        return f"one group in {side}"
    largest = max(cell.group_images.values())
    if largest >= ONE_GROUP_SHARE * cell.images:
        return f"one group holds {largest} of {cell.images} in {side}"
    return None


def held_out_warnings(all_counts: list[SplitCounts]) -> list[str]:
    """One line per task and class whose val/test figures (in some fold) cannot be estimated."""
    warnings = []
    for task, name in all_counts[0].classes():
        notes: dict[str, list[str]] = {}
        for counts in all_counts:
            for side in (s for s in HELD_OUT if s in counts.sides):
                note = held_out_note(counts.cells[task][name][side], side)
                if note:
                    notes.setdefault(note, []).append(counts.fold)
        if notes:
            where = "; ".join(note + (f" (fold {', '.join(folds)})" if folds != [""] else "")
                              for note, folds in notes.items())
            warnings.append(f"task {task!r}: class {name!r} {where} "
                            f"[{describe_groups(all_counts[0].total(task, name), 3)}]: its held-out figures "
                            "there are marked not estimable in metrics.json")
    return warnings


def thin_training_warnings(all_counts: list[SplitCounts]) -> list[str]:
    """One line per class that trains on under THIN_TRAIN_SHARE of its images in some split: its
    largest groups landed on the held-out side (a trained but weak class, not a refusal)."""
    warnings = []
    for task, name in all_counts[0].classes():
        total = all_counts[0].total(task, name).images
        thin = [c for c in all_counts if c.cells[task][name]["train"].images < THIN_TRAIN_SHARE * total]
        if thin:
            where = ", ".join((f"fold {c.fold}: " if c.fold else "") + f"{c.cells[task][name]['train'].images}"
                              for c in thin)
            warnings.append(f"task {task!r}: class {name!r} trains on few of its {total} images ({where}): its "
                            "largest groups are held out; finer groups spread it more evenly")
    return warnings


def mark_estimable(figures: dict, counts: SplitCounts, side: str) -> dict:
    """Add each class's held-out ``groups`` and ``estimable`` (with a ``note`` when not) to a
    metrics.json block (task -> classification_metrics), and per task ``not_estimable``: {class: note}."""
    for task, block in figures.items():
        block["not_estimable"] = {}
        for name, entry in block["per_class"].items():
            cell = counts.cells[task][name][side]
            note = held_out_note(cell, side)
            entry.update({"groups": cell.groups, "estimable": note is None})
            if note:
                entry["note"] = note
                block["not_estimable"][name] = note
    return figures


def split_table_csv(all_counts: list[SplitCounts]) -> str:
    """Long CSV: fold, task, class, side, images, groups, note; task and class '*' count every image."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(TABLE_HEADER)
    for counts in all_counts:
        for task, by_class in counts.cells.items():
            for name, by_side in by_class.items():
                for side, cell in by_side.items():
                    note = held_out_note(cell, side) if side in HELD_OUT and task != ALL else None
                    writer.writerow([counts.fold, task, name, side, cell.images, cell.groups, note or ""])
    return buf.getvalue()


def format_split_table(all_counts: list[SplitCounts]) -> str:
    """The console table: a row per task and class, a column per (fold,) side, cells 'images/groups';
    '!' marks a held-out cell whose figures cannot be estimated."""
    columns = [(c, side) for c in all_counts for side in c.sides]
    heads = [f"{'f' + c.fold + ' ' if c.fold else ''}{side}" for c, side in columns]
    width = max(10, *(len(h) + 1 for h in heads))
    label = max(len(f"{t} {n}") for c in all_counts[:1] for t, by in c.cells.items() for n in by) + 2
    lines = [f"{'split: images/groups':{label}s}" + "".join(f"{h:>{width}s}" for h in heads)]
    for task, name in [*all_counts[0].classes(), (ALL, ALL)]:
        cells = []
        for counts, side in columns:
            cell = counts.cells[task][name][side]
            flag = "!" if side in HELD_OUT and task != ALL and held_out_note(cell, side) else " "
            cells.append(f"{cell.images}/{cell.groups}{flag}".rjust(width))
        title = "all images" if task == ALL else f"{task} {name}"
        lines.append(f"{title:{label}s}" + "".join(cells))
    return "\n".join(lines)
