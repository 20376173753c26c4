"""Calibrate an existing run again, from its checkpoint and its own split: e.g. after changing
``decide.target_accuracy`` / ``decide.delta``, or for a run trained before calibration existed.

Re-evaluates the run's selected checkpoint on its val and test groups (``evaluate_run``, the same
code as at the end of training), rewrites ``calibration.json`` and the evaluation blocks of
``metrics.json`` (its ``run`` record is kept), and returns the metrics. Export afterwards to carry
the new temperature and threshold into the model.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from mscvision.core.errors import DataError
from mscvision.core.fileio import write_json_atomic
from mscvision.training.config import load_config
from mscvision.training.dataset_setup import prepare_data
from mscvision.training.evaluate import evaluate_run
from mscvision.training.loaders import build_loaders
from mscvision.training.run_files import locate_run


def recalibrate(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    run = locate_run(run_dir)
    config = load_config([run.run_dir / "config.yaml"], overrides)
    if not config.calibration.enabled:
        raise DataError(f"{run.run_dir}: calibration.enabled is false in its config. Fix: pass calibration.enabled=true")
    data = prepare_data(config, _saved_split(run.run_dir, config))
    loaders = build_loaders(config, data)
    if loaders.val is None:
        raise DataError(f"{run.run_dir}: its split has no val groups to calibrate on (trained with data.val_fraction 0 "
                        "before calibration slices existed). Fix: train it again.")
    import torch

    metrics, _ = evaluate_run(run.checkpoint, data, loaders, run.run_dir, torch.cuda.is_available(), config.trainer.tta,
                              config.export.tta, config.decide)
    previous = run.metrics
    metrics = {**previous, **metrics, "run": previous.get("run", {})}
    write_json_atomic(run.run_dir / "metrics.json", metrics)
    return metrics


def _saved_split(run_dir: Path, config) -> np.ndarray:
    """The run's own split, per manifest row in manifest order (split.csv names every row by path)."""
    from mscvision.training.dataset_setup import load_labelled

    with open(run_dir / "split.csv", newline="", encoding="utf-8") as f:
        side_of = {row["path"]: row["split"] for row in csv.DictReader(f)}
    paths = [str(Path(p).resolve()) for p in load_labelled(config).manifest.paths]
    missing = [p for p in paths if p not in side_of]
    if missing:
        raise DataError(f"{run_dir}/split.csv does not name {len(missing)} image(s) of the data set, e.g. {missing[0]}. "
                        "Fix: recalibrate on the data the run was trained on.")
    return np.array([side_of[p] if side_of[p] != "excluded" else "train" for p in paths])
