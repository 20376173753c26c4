"""The shapes data set: tiny grey images of discs and bars, the test and model-fixture data (numpy only).

Why it lives in the package, not in the tests: the committed model fixture
(``models/fixtures/shapes-tiny.onnx``) is trained on it by ``scripts/make_fixture.py``, and the
tests that check that fixture build the same data; one copy here serves both without the script
importing test code. It needs only numpy and ``core.imageio``, so the bare station install's
tests can build it too. Unlike ``synth.dataset`` it imitates no microscopy: two easy tasks that a
``tiny`` model learns in seconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mscvision.core.imageio import write_image


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


def tiny_overrides(manifest: Path, out: Path, epochs: int = 2) -> list[str]:
    """Config overrides that train a ``tiny`` model on a shapes manifest in seconds on a CPU.

    Plain ``key=value`` strings for ``training.config.load_config`` (nothing is imported from the
    training layer): the shrunken real default config, the lightning-hydra-template habit.
    """
    return [
        f"data.path={manifest}", f"output_dir={out}", "data.num_workers=0",
        "tasks={shape: {column: shape}, count: {column: count}}",
        "preprocess.size=[32, 32]", "model.backbone=tiny", f"trainer.max_epochs={epochs}",
        "trainer.batch_size=8", "trainer.progress_bar=false", "data.val_fraction=0.25", "data.test_fraction=0.25",
    ]
