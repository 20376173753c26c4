"""Shared fixtures: tiny generated data sets (never the shared real data), blocked heavy imports."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

# re-exported: the test files import the shapes builder from here (`from conftest import ...`)
from mscvision.synth.shapes import draw_shape, make_shapes_dataset, tiny_overrides  # noqa: F401

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
MITOCHECK = REPO.parent / "shared" / "data" / "mitocheck"

# The folders whose tests train, export or benchmark: they need the train extra, which a QC
# station's bare `pip install .` lacks. There a bare `pytest` skips each of their files with this reason
# (before it is imported, so a missing torch is a skip, not a collection error); tests/core,
# tests/synth and tests/runtime still run.
NEEDS_TRAIN_EXTRA = ("training", "export", "benchmarks")
TRAIN_EXTRA_MODULES = ("torch", "torchvision", "lightning", "albumentations", "yaml", "onnx")
MISSING_TRAIN_EXTRA = tuple(m for m in TRAIN_EXTRA_MODULES if importlib.util.find_spec(m) is None)


class TrainExtraMissing(pytest.Module):
    """A test file collected as one skip, never imported: the train extra is not installed."""

    def collect(self):
        raise pytest.skip.Exception(
            f"tests/{self.path.parent.name} needs the training install (missing: {', '.join(MISSING_TRAIN_EXTRA)}): "
            "pip install -e '.[train,dev]'", allow_module_level=True)


def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    # per file, not per folder: `pytest tests/training/test_x.py` named on the command line skips too
    if MISSING_TRAIN_EXTRA and module_path.resolve().parent.parent == REPO / "tests" \
            and module_path.parent.name in NEEDS_TRAIN_EXTRA:
        return TrainExtraMissing.from_parent(parent, path=module_path)
    return None  # pytest's own module collector


@pytest.fixture
def shapes_dataset(tmp_path: Path) -> Path:
    return make_shapes_dataset(tmp_path / "shapes")


def train_tiny_ema_run(root: Path, *extra: str, epochs: int = 3):
    """A tiny model with EMA (so "the weights evaluated" is a real question) trained on the shapes fixture."""
    import torch

    from mscvision.training.config import load_config
    from mscvision.training.fit import train

    torch.set_num_threads(1)
    manifest = make_shapes_dataset(root / "shapes")
    return train(load_config(None, [*tiny_overrides(manifest, root / "runs", epochs=epochs), "optim.ema_decay=0.5",
                                    *extra]))


def station_test_balanced_accuracy(model, run_dir: Path) -> dict[str, float]:
    """What a station scores on a run's test images, read from their files through the runtime."""
    import csv

    from mscvision.core.metrics import classification_metrics
    from mscvision.runtime.inputs import load_input

    with open(run_dir / "split.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    probs = model.predict(np.stack([load_input(r["path"], model.metadata) for r in rows]))
    scores = {}
    for task in model.metadata.tasks:
        y = np.array([task.classes.index(r[task.name]) for r in rows])
        scores[task.name] = classification_metrics(y, probs[task.name].argmax(axis=1), task.classes)["balanced_accuracy"]
    return scores
