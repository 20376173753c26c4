"""Data sets: a folder of images plus ``manifest.csv`` (docs/architecture.md "Data sets and tasks").

Columns: ``path`` (relative to the manifest's folder), one column per task (empty = unknown for
that task), ``group`` (donor / lot / well / track: the unit a split never cuts), optional
``split`` (train / val / test) that fixes the split. A plain class-per-folder tree is converted.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mscvision.core.errors import DataError
from mscvision.core.imageio import is_image_file
from mscvision.core.tasks import IGNORE_INDEX, Task

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Manifest:
    root: Path
    paths: tuple[Path, ...]  # absolute
    groups: tuple[str, ...]
    labels: dict[str, tuple[str, ...]]  # column -> label per row ("" = unknown)
    splits: tuple[str, ...] | None  # fixed split per row, when the manifest has a split column
    rows: tuple[int, ...]  # 1-based line number in the CSV, for error messages
    has_groups: bool = True

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: np.ndarray) -> "Manifest":
        pick = [int(i) for i in index]
        return Manifest(self.root, tuple(self.paths[i] for i in pick), tuple(self.groups[i] for i in pick),
                        {c: tuple(v[i] for i in pick) for c, v in self.labels.items()},
                        None if self.splits is None else tuple(self.splits[i] for i in pick),
                        tuple(self.rows[i] for i in pick), self.has_groups)


def load_dataset(path: str | Path, columns: list[str], check_files: bool = True,
                 skip_missing: bool = False) -> tuple[Manifest, list[str]]:
    """A manifest CSV, or a folder holding ``manifest.csv``, or a class-per-folder tree.

    Returns the manifest and the warnings for rows skipped (only when ``skip_missing``).
    """
    path = Path(path)
    if path.is_dir() and not (path / "manifest.csv").is_file():
        if len(columns) != 1:
            raise DataError(f"{path}: a class-per-folder tree holds one task, but {len(columns)} are "
                            "configured. Fix: write a manifest.csv with one column per task.")
        return manifest_from_folders(path, columns[0]), []
    csv_path = path / "manifest.csv" if path.is_dir() else path
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: no such manifest. Fix: point data.path at a manifest.csv or a "
                        "folder of class sub-folders.")
    return manifest_from_csv(csv_path, columns, check_files, skip_missing)


def manifest_from_csv(csv_path: Path, columns: list[str], check_files: bool = True,
                  skip_missing: bool = False, split: str | None = None) -> tuple[Manifest, list[str]]:
    """``split``: keep only the rows of that split (a run's split.csv also has ``excluded`` rows)."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        _check_header(csv_path, header, columns)
        records = list(reader)
    root = csv_path.parent
    has_groups = "group" in header
    has_split = "split" in header
    kept, warnings = [], []
    for line, rec in enumerate(records, start=2):
        if split is not None and rec.get("split") != split:
            continue
        image = root / rec["path"]
        if check_files and not image.is_file():
            message = f"{csv_path}:{line}: image {rec['path']!r} does not exist"
            if not skip_missing:
                raise DataError(f"{message}. Fix: correct the path, delete the row, or set "
                                "data.skip_missing: true to skip such rows with a warning.")
            warnings.append(message)
            continue
        if has_split and rec["split"] not in SPLIT_NAMES:
            raise DataError(f"{csv_path}:{line}: split {rec['split']!r} is not one of {SPLIT_NAMES}.")
        kept.append((line, image, rec))
    if not kept:
        raise DataError(f"{csv_path}: no usable rows{f' in split {split!r}' if split else ''}. Fix: add images "
                        "to the manifest.")
    return Manifest(
        root=root,
        paths=tuple(image for _, image, _ in kept),
        groups=tuple((rec["group"] if has_groups else f"row{line}") for line, _, rec in kept),
        labels={c: tuple(rec[c].strip() for _, _, rec in kept) for c in columns},
        splits=tuple(rec["split"] for _, _, rec in kept) if has_split else None,
        rows=tuple(line for line, _, _ in kept),
        has_groups=has_groups,
    ), warnings


def _check_header(csv_path: Path, header: list[str], columns: list[str]) -> None:
    missing = [c for c in ["path", *columns] if c not in header]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {missing}; it has {header}. Fix: add them, or "
                        "map each task to an existing column in the config (tasks.NAME.column).")


def manifest_from_folders(root: Path, column: str) -> Manifest:
    """``root/CLASS/**/image`` → a one-task manifest; each image is its own group (warned upstream)."""
    paths, labels = [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for image in sorted(class_dir.rglob("*")):
            if image.is_file() and is_image_file(image):
                paths.append(image)
                labels.append(class_dir.name)
    if not paths:
        raise DataError(f"{root}: no images in class sub-folders. Fix: use root/CLASS/image.png or a manifest.csv.")
    rows = tuple(range(1, len(paths) + 1))
    return Manifest(root, tuple(paths), tuple(str(p.relative_to(root)) for p in paths),
                    {column: tuple(labels)}, None, rows, has_groups=False)


def infer_classes(manifest: Manifest, column: str) -> tuple[str, ...]:
    return tuple(sorted({label for label in manifest.labels[column] if label}))


def encode_targets(manifest: Manifest, tasks: list[Task]) -> dict[str, np.ndarray]:
    """Label names → class indices per task; unknown (empty) → IGNORE_INDEX; a foreign label is an error."""
    targets = {}
    for task in tasks:
        lookup = {name: i for i, name in enumerate(task.classes)}
        column = manifest.labels[task.column]
        out = np.full(len(column), IGNORE_INDEX, np.int64)
        for i, label in enumerate(column):
            if not label:
                continue
            if label not in lookup:
                raise DataError(f"{manifest.root / 'manifest.csv'}:{manifest.rows[i]}: label {label!r} is not "
                                f"a class of task {task.name!r} {list(task.classes)}. Fix: correct the label or "
                                f"add it to tasks.{task.name}.classes.")
            out[i] = lookup[label]
        targets[task.name] = out
    return targets
