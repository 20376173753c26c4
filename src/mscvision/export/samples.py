"""Real images for parity and calibration: a run's split.csv, decoded and preprocessed exactly as
training did (core's ``decode_image`` + ``preprocess``), never random tensors."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mscvision.core.errors import DataError
from mscvision.core.imageio import decode_image
from mscvision.core.preprocess import PreprocessSpec, preprocess
from mscvision.core.tasks import IGNORE_INDEX, Task


@dataclass(frozen=True)
class Samples:
    paths: list[str]
    tensors: np.ndarray  # (N, C, h, w) float32, the model's input
    targets: dict[str, np.ndarray]  # task -> class index (IGNORE_INDEX = unknown)
    splits: tuple[str, ...]  # which splits they came from, for the reports
    max_side: int  # largest decoded side seen, to size the runtime's "too large" limit
    bit_depths: tuple[int, ...]
    median_side: int = 0  # the typical decoded side: a QC station cuts whole fields into tiles of it

    def __len__(self) -> int:
        return len(self.paths)


def read_split(run_dir: Path) -> list[dict]:
    path = run_dir / "split.csv"
    if not path.is_file():
        raise DataError(f"{run_dir}: no split.csv, so there are no held-out images for the parity gate. "
                        "Fix: export from a run directory written by `scripts/train.py`.")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and not Path(rows[0]["path"]).is_file():
        raise DataError(f"{path}: image {rows[0]['path']} is not found from here. Fix: run export from the "
                        "folder training ran in (relative paths in split.csv are relative to it), or make "
                        "the data set available at that path.")
    return rows


def load_samples(rows: list[dict], splits: tuple[str, ...], tasks: list[Task], spec: PreprocessSpec,
                 want: int, limit: int, seed: int = 0) -> Samples:
    """Images of ``splits``, taken in that order until ``want`` are reached (at most ``limit``)."""
    chosen: list[dict] = []
    used: list[str] = []
    for split in splits:
        if len(chosen) >= want:
            break
        picked = [r for r in rows if r["split"] == split]
        if picked:
            used.append(split)
        chosen += picked
    if not chosen:
        raise DataError(f"split.csv has no {'/'.join(splits)} rows to check the exported model on.")
    if len(chosen) > limit:  # a fixed random subset: reproducible, not biased to the first groups
        keep = np.sort(np.random.default_rng(seed).choice(len(chosen), limit, replace=False))
        chosen = [chosen[i] for i in keep]
    return _decode_all(chosen, tuple(used), tasks, spec)


def _decode_all(rows: list[dict], splits: tuple[str, ...], tasks: list[Task], spec: PreprocessSpec) -> Samples:
    tensors, sides, depths = [], [], set()
    for row in rows:
        decoded = decode_image(row["path"])
        tensors.append(preprocess(decoded.array, spec, decoded.pixel_size_um, source=row["path"]))
        sides.append(max(decoded.array.shape[:2]))
        depths.add(decoded.bit_depth)
    targets = {t.name: np.array([_index(t, r.get(t.name, "")) for r in rows], np.int64) for t in tasks}
    return Samples([r["path"] for r in rows], np.stack(tensors), targets, splits, max(sides), tuple(sorted(depths)),
                   int(np.median(sides)))


def _index(task: Task, label: str) -> int:
    return task.index(label) if label in task.classes else IGNORE_INDEX
