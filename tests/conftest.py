"""Shared fixtures: tiny generated data sets (never the shared real data), blocked heavy imports."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
MITOCHECK = REPO.parent / "shared" / "data" / "mitocheck"


def draw_shape(rng: np.random.Generator, size: int, shape: str, count: int) -> np.ndarray:
    """A grey image with ``count`` bright discs or bars on a noisy background."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    img = rng.normal(0.2, 0.03, (size, size)).astype(np.float32)
    for _ in range(count):
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        angle = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        a, b = (size * 0.12, size * 0.12) if shape == "disc" else (size * 0.3, size * 0.05)
        img[(u / a) ** 2 + (v / b) ** 2 <= 1] = rng.uniform(0.6, 0.9)
    return np.clip(img, 0, 1)


def make_shapes_dataset(root: Path, n: int = 48, size: int = 32, groups: int = 8, seed: int = 0,
                        bit_depth: int = 8, unknown_every: int = 0) -> Path:
    """Tasks ``shape`` (disc / bar) and ``count`` (one / two); ``unknown_every`` blanks some count labels."""
    from mscvision.core.imageio import write_image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = ["path,shape,count,group"]
    scale = 255 if bit_depth == 8 else 65535
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    for i in range(n):
        shape, count = ("disc", "bar")[i % 2], ("one", "two")[(i // 2) % 2]
        img = (draw_shape(rng, size, shape, 1 if count == "one" else 2) * scale).astype(dtype)
        rel = f"images/img{i:03d}.png"
        write_image(root / rel, img)
        count_label = "" if unknown_every and i % unknown_every == 0 else count
        lines.append(f"{rel},{shape},{count_label},g{i % groups}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


@pytest.fixture
def shapes_dataset(tmp_path: Path) -> Path:
    return make_shapes_dataset(tmp_path / "shapes")


def tiny_overrides(manifest: Path, out: Path, epochs: int = 2) -> list[str]:
    """Shrink the real default config to seconds on a CPU (the lightning-hydra-template habit)."""
    return [
        f"data.path={manifest}", f"output_dir={out}", "data.num_workers=0",
        "tasks={shape: {column: shape}, count: {column: count}}",
        "preprocess.size=[32, 32]", "model.backbone=tiny", f"trainer.max_epochs={epochs}",
        "trainer.batch_size=8", "trainer.progress_bar=false", "data.val_fraction=0.25", "data.test_fraction=0.25",
    ]


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
