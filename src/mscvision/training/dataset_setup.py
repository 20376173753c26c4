"""From config to labelled, split data: synthetic cache, manifest, tasks, targets, group split."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mscvision.core.errors import DataError
from mscvision.core.manifest import Manifest, encode_targets, infer_classes, load_dataset
from mscvision.core.fileio import write_text_atomic
from mscvision.core.split_check import SplitCounts, check_splits, count_split, format_split_table, split_table_csv
from mscvision.core.splits import check_groups_disjoint, stratification_key, task_labels, train_val_test_split
from mscvision.core.tasks import Task
from mscvision.core.machine import usable_cores
from mscvision.training.config import DataConfig, RunConfig, SyntheticConfig


@dataclass(frozen=True)
class PreparedData:
    manifest: Manifest
    tasks: list[Task]
    targets: dict[str, np.ndarray]  # task -> class index per row (IGNORE_INDEX = unknown)
    split: np.ndarray  # "train" / "val" / "test" per row
    warnings: list[str]
    split_computed: bool = True  # made by the splitter (not a manifest split column, not passed in)
    source: Path | None = None  # the manifest file read (None: a class-per-folder tree)

    def indices(self, side: str) -> np.ndarray:
        return np.flatnonzero(self.split == side)


def resolve_data_path(data: DataConfig) -> Path:
    """The configured data set, or the synthetic default (generated once into the cache dir)."""
    if data.path:
        return Path(data.path)
    return ensure_synthetic(data.synthetic)


def ensure_synthetic(cfg: SyntheticConfig) -> Path:
    from mscvision.synth import generate_dataset

    params = {"n": cfg.n, "seed": cfg.seed, "modality": cfg.modality, "bit_depth": cfg.bit_depth, "size": cfg.size}
    folder = Path(cfg.cache_dir) / "_".join(f"{k}{v}" for k, v in params.items())
    if _cache_matches(folder, params):
        return folder / "manifest.csv"
    print(f"generating the synthetic data set ({cfg.n} images) into {folder} (once; cached)", flush=True)
    # every usable core: generation is per image, and its output does not depend on the count
    return Path(generate_dataset(folder, workers=usable_cores(), **params))


def _cache_matches(folder: Path, params: dict) -> bool:
    info, manifest = folder / "synth.json", folder / "manifest.csv"
    if not (info.is_file() and manifest.is_file()):
        return False
    recorded = json.loads(info.read_text())
    return all(recorded.get(k) == v for k, v in params.items())


@dataclass(frozen=True)
class Labelled:
    manifest: Manifest
    tasks: list[Task]
    targets: dict[str, np.ndarray]
    warnings: list[str]
    source: Path | None = None  # the manifest file read (None: a class-per-folder tree)


def load_labelled(config: RunConfig) -> Labelled:
    """The configured data set with its tasks (classes from the config or the data) and targets."""
    columns = {name: (task.column or name) for name, task in config.tasks.items()}
    path = resolve_data_path(config.data)
    manifest, warnings = load_dataset(path, list(columns.values()), skip_missing=config.data.skip_missing)
    source = path / "manifest.csv" if path.is_dir() else path  # the file load_dataset read, if any
    tasks = [Task(name, tuple(cfg.classes) if cfg.classes else infer_classes(manifest, columns[name]), columns[name])
             for name, cfg in config.tasks.items()]
    targets = encode_targets(manifest, tasks)
    if not manifest.has_groups:
        warnings.append("the data set has no 'group' column: each image is its own group, so near-"
                        "duplicates (same cell, well or donor) may straddle the split and inflate metrics")
    return Labelled(manifest, tasks, targets, warnings, source if source.is_file() else None)


def prepare_data(config: RunConfig, split: np.ndarray | None = None) -> PreparedData:
    """Load, label and split the configured data; ``split`` (per row) overrides the split (CV folds)."""
    labelled = load_labelled(config)
    manifest, targets = labelled.manifest, labelled.targets
    computed = split is None and manifest.splits is None
    if split is None:
        split = _split(manifest, targets, config.data, config.held_out_val_fraction)
    check_groups_disjoint(np.asarray(manifest.groups), split)
    required = ("train", "test") if config.held_out_val_fraction == 0 else ("train", "val", "test")
    for side in required:
        if not (split == side).any():
            raise DataError(f"the {side} split is empty ({len(manifest)} images, "
                            f"{len(set(manifest.groups))} groups). Fix: add data or groups, or adjust "
                            "data.val_fraction / data.test_fraction.")
    data = PreparedData(manifest, labelled.tasks, targets, split, labelled.warnings, computed, labelled.source)
    check_split(data)  # refuse now, before any image is decoded or a run directory made
    return data


def check_split(data: PreparedData, rows: np.ndarray | None = None) -> tuple[SplitCounts, list[str]]:
    """The split check over ``rows`` (default all; after the image scan, the usable ones): raises
    DataError when a class would have no training images; returns the counts and the warnings."""
    counts = count_split(data.tasks, data.targets, np.asarray(data.manifest.groups), data.split, rows)
    return counts, check_splits([counts], data.split_computed)


def report_split(all_counts: list[SplitCounts], warnings: list[str], run_dir: Path | None) -> None:
    """Print the split warnings and table (before training starts); write ``split_table.csv``."""
    for message in warnings:
        print(f"warning: {message}", flush=True)
    print(format_split_table(all_counts), flush=True)
    if run_dir is not None:
        write_text_atomic(run_dir / "split_table.csv", split_table_csv(all_counts))


def _split(manifest: Manifest, targets: dict[str, np.ndarray], data: DataConfig, val_fraction: float) -> np.ndarray:
    """The manifest's own split column, else a group split (``val_fraction``: the config's
    ``held_out_val_fraction``, which includes a calibration-only slice)."""
    groups = np.asarray(manifest.groups)
    if manifest.splits is not None:
        split = np.asarray(manifest.splits)
    else:
        split = train_val_test_split(stratification_key(targets), groups, val_fraction,
                                     data.test_fraction, data.split_seed, protect=task_labels(targets))
    return split


def split_csv(data: PreparedData, usable: np.ndarray | None = None) -> str:
    """CSV of every row's split with absolute image paths (export and audits read it from anywhere).

    Rows outside ``usable`` (images skipped as unreadable) are marked ``excluded``.
    """
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "group", "split", *(t.name for t in data.tasks)])
    excluded = set(range(len(data.manifest))) - set(usable.tolist() if usable is not None else range(len(data.manifest)))
    for i, path in enumerate(data.manifest.paths):
        writer.writerow([str(Path(path).resolve()), data.manifest.groups[i], "excluded" if i in excluded else data.split[i],
                         *(data.manifest.labels[t.column][i] for t in data.tasks)])
    return buf.getvalue()


def loss_class_weights(config: RunConfig, data: PreparedData, rows: np.ndarray) -> dict[str, list[float]] | None:
    """The class weights the config asks for (``optim.class_weights``, ``class_weight_power``), or None."""
    if not config.optim.class_weights:
        return None
    return class_weights(data.targets, data.tasks, rows, config.optim.class_weight_power)


def class_weights(targets: dict[str, np.ndarray], tasks: list[Task], rows: np.ndarray,
                  power: float = 1.0) -> dict[str, list[float]]:
    """Per-task class weights proportional to (1 / class count) ** ``power`` over the given rows,
    scaled so the mean weight over those samples is 1. power 1 is inverse frequency (every class
    weighs the same in the loss); 0.5, its square root, balances less and so costs the big classes
    less precision."""
    weights = {}
    for task in tasks:
        counts = class_counts(targets[task.name][rows], task)
        raw = np.maximum(counts, 1.0) ** -power
        # max(): a task with no known label in these rows gets zero weights, not NaN
        weights[task.name] = (raw * counts.sum() / max((counts * raw).sum(), 1e-12)).tolist()
    return weights


def class_counts(y: np.ndarray, task: Task) -> np.ndarray:
    """Samples per class of ``task``; unknown labels (IGNORE_INDEX) are not counted."""
    return np.bincount(y[y >= 0], minlength=task.num_classes).astype(float)


def sample_weights(targets: dict[str, np.ndarray], task: Task, rows: np.ndarray) -> np.ndarray:
    """Per-row sampling weight, inverse to the row's class count in ``task`` (unknown labels: mean)."""
    y = targets[task.name][rows]
    counts = class_counts(y, task)
    per_class = 1.0 / np.maximum(counts, 1.0)
    weights = np.where(y >= 0, per_class[np.maximum(y, 0)], per_class[counts > 0].mean())
    return weights / weights.sum()
