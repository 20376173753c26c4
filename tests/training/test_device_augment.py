"""The training augmentation: one declaration (training/augment.py) and the CPU path built from it."""

from __future__ import annotations

import numpy as np

from mscvision.training.augment import albumentations_compose, apply_augment, augment_plan
from mscvision.training.config import AugmentConfig


def cpu_seed(seed: int, epoch: int, index: int) -> int:
    """The CPU path's per-sample seed (data.ImageSet)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def cpu_applied(plan, n: int, image: np.ndarray) -> np.ndarray:
    """(n, len(plan)) bools: which transforms of the real CPU pipeline ran on each of n samples."""
    compose = albumentations_compose(plan)
    applied = np.zeros((n, len(plan)), bool)
    for i in range(n):
        apply_augment(compose, image, cpu_seed(0, 0, i))
        applied[i] = [bool(t.params) for t in compose.transforms]
    return applied


def test_cpu_transforms_draw_independently_per_sample():
    # albumentations' Compose.set_random_seed seeds every transform alike: both flips applied together
    # or not at all, and every p=0.5 transform exactly when the flips are. apply_augment must not.
    plan = augment_plan(AugmentConfig())
    applied = cpu_applied(plan, 1500, np.random.default_rng(0).random((16, 16, 1), dtype=np.float32))
    flips = applied[:, 0] * 2 + applied[:, 1]  # 0 none, 1 vertical, 2 horizontal, 3 both
    np.testing.assert_allclose(np.bincount(flips, minlength=4) / len(flips), 0.25, atol=0.045)
    varying = [k for k, op in enumerate(plan) if 0 < op.p < 1]
    corr = np.corrcoef(applied[:, varying].T)
    assert np.abs(corr - np.eye(len(varying))).max() < 0.1  # |r| < 0.1: ~4 standard errors at n 1500
