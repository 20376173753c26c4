"""Random augmentation for training only; it never replaces a preprocessing step.

It runs between the two halves of ``core.preprocess``: on the float32 (H, W, C) image in [0, 1]
that ``to_unit_range`` returns, before ``standardize``. Geometric transforms commute with the
per-image intensity scaling (up to the reflected border), so doing them here rather than on the
raw decoded array lets the scaled image be cached once, and a 16-bit image never meets
albumentations' uint8-or-float32 rule: it is float32 by then. Photometric transforms see [0, 1]
floats, as albumentations expects (it clips float32 to [0, 1]).
"""

from __future__ import annotations

import cv2
import numpy as np

import albumentations as A  # mscvision.training/__init__ has set NO_ALBUMENTATIONS_UPDATE

from mscvision.training.config import AugmentConfig


def build_train_augment(cfg: AugmentConfig) -> A.Compose | None:
    if not cfg.enabled:
        return None
    geometric = [
        A.HorizontalFlip(p=0.5 if cfg.flips else 0.0),
        A.VerticalFlip(p=0.5 if cfg.flips else 0.0),
        A.RandomRotate90(p=1.0 if cfg.rot90 else 0.0),
        A.Affine(rotate=(-cfg.affine_degrees, cfg.affine_degrees),
                 scale=(1 - cfg.affine_scale, 1 + cfg.affine_scale),
                 border_mode=cv2.BORDER_REFLECT_101, p=0.5),
    ]
    photometric = [
        A.RandomBrightnessContrast(cfg.brightness_contrast, cfg.brightness_contrast, p=0.5),
        A.RandomGamma(gamma_limit=(100 * (1 - cfg.gamma), 100 * (1 + cfg.gamma)), p=0.3),
        A.GaussianBlur(blur_limit=(3, 3), p=cfg.blur_prob),
        A.GaussNoise(std_range=(0.0, cfg.noise_std), p=0.3),
    ]
    return A.Compose(geometric + photometric, seed=0)


def apply_augment(augment: A.Compose, image: np.ndarray, seed: int) -> np.ndarray:
    """Augment one (H, W, C) float32 image with its own seed: same (seed) → same result anywhere.

    Seeding per sample (from run seed, epoch and index) makes augmentation independent of the
    worker count and of where a resumed run restarts.
    """
    augment.set_random_seed(seed)
    out = augment(image=image)["image"]
    return np.ascontiguousarray(out, dtype=np.float32)
