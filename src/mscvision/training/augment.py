"""Random augmentation for training only; it never replaces a preprocessing step.

It runs between the two halves of ``core.preprocess``: on the float32 (H, W, C) image in [0, 1]
that ``to_unit_range`` returns, before ``standardize``. Geometric transforms commute with the
per-image intensity scaling (up to the reflected border), so doing them here rather than on the
raw decoded array lets the scaled image be cached once, and a 16-bit image never meets
albumentations' uint8-or-float32 rule: it is float32 by then. Photometric transforms see [0, 1]
floats, as albumentations expects (it clips float32 to [0, 1]).

One declaration, two executors. ``augment_plan`` turns ``AugmentConfig`` into a plan: a tuple of
frozen transform specs in the order they run, each with its probability and parameter ranges.
Nothing else states a probability or a range. Two builders read the plan and nothing but the plan:

- ``albumentations_compose`` (the CPU path): one albumentations ``Compose``, applied per image in the
  loader workers (``data.ImageSet``);
- ``device_augment.BatchAugment`` (the device path, ``data.augment_on``): the same transforms as
  torch ops on a whole batch, where the model trains.

Each spec below states albumentations 2.0.8's semantics for it (what the torch side reproduces).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import cv2
import numpy as np

import albumentations as A  # mscvision.training/__init__ has set NO_ALBUMENTATIONS_UPDATE

from mscvision.training.config import AugmentConfig


@dataclass(frozen=True)
class Flip:
    """Mirror with probability ``p``: ``horizontal`` reverses the width axis, ``vertical`` the height axis."""

    axis: str
    p: float


@dataclass(frozen=True)
class Rot90:
    """With probability ``p``: k quarter turns, k uniform in {0, 1, 2, 3} (``np.rot90`` over height, width)."""

    p: float


@dataclass(frozen=True)
class Affine:
    """With probability ``p``: rotate by an angle uniform in ``rotate`` (degrees) and scale x and y by two
    factors drawn independently, each uniform in ``scale`` (albumentations' ``keep_ratio=False``), about
    the image centre ((w - 1) / 2, (h - 1) / 2); no shear, no translation; bilinear, ``border`` filled
    by reflection without repeating the edge pixel (cv2.BORDER_REFLECT_101)."""

    rotate: tuple[float, float]
    scale: tuple[float, float]
    p: float
    border: str = "reflect_101"


@dataclass(frozen=True)
class BrightnessContrast:
    """With probability ``p``: ``clip(x * alpha + beta, 0, 1)``, alpha = 1 + uniform(``contrast``), beta =
    uniform(``brightness``) x 1.0 (the float32 maximum: albumentations' ``brightness_by_max=True``)."""

    brightness: tuple[float, float]
    contrast: tuple[float, float]
    p: float


@dataclass(frozen=True)
class Gamma:
    """With probability ``p``: ``x ** gamma``, gamma uniform in ``gamma`` (albumentations takes it x 100)."""

    gamma: tuple[float, float]
    p: float


@dataclass(frozen=True)
class GaussianBlur:
    """With probability ``p``: a ``ksize`` x ``ksize`` Gaussian, sigma uniform in ``sigma``; kernel taps
    exp(-t² / 2 sigma²) at t = -k//2 .. k//2, normalised; border reflected as cv2.BORDER_REFLECT_101."""

    sigma: tuple[float, float]
    ksize: int
    p: float


@dataclass(frozen=True)
class GaussNoise:
    """With probability ``p``: ``clip(x + n, 0, 1)``, n ~ N(0, sigma²) per pixel and channel, sigma uniform
    in ``std`` per image (x 1.0, the float32 maximum)."""

    std: tuple[float, float]
    p: float


Transform = Flip | Rot90 | Affine | BrightnessContrast | Gamma | GaussianBlur | GaussNoise
BORDERS = {"reflect_101": cv2.BORDER_REFLECT_101}  # Affine.border -> OpenCV (the torch side: device_augment.py)


def augment_plan(cfg: AugmentConfig) -> tuple[Transform, ...] | None:
    """The training augmentation, declared once: None when ``augment.enabled`` is off."""
    if not cfg.enabled:
        return None
    flip_p = 0.5 if cfg.flips else 0.0
    return (
        Flip("horizontal", flip_p),
        Flip("vertical", flip_p),
        Rot90(1.0 if cfg.rot90 else 0.0),
        Affine(rotate=(-cfg.affine_degrees, cfg.affine_degrees), scale=(1 - cfg.affine_scale, 1 + cfg.affine_scale),
               p=0.5),
        BrightnessContrast(brightness=(-cfg.brightness_contrast, cfg.brightness_contrast),
                           contrast=(-cfg.brightness_contrast, cfg.brightness_contrast), p=0.5),
        Gamma(gamma=(1 - cfg.gamma, 1 + cfg.gamma), p=0.3),
        GaussianBlur(sigma=(0.5, 3.0), ksize=3, p=cfg.blur_prob),  # (0.5, 3.0): albumentations' default range
        GaussNoise(std=(0.0, cfg.noise_std), p=0.3),
    )


def albumentations_compose(plan: tuple[Transform, ...]) -> A.Compose:
    """The CPU path: the plan as one albumentations pipeline, in the plan's order."""
    return A.Compose([_albumentations(op) for op in plan], seed=0)


def _albumentations(op: Transform) -> A.BasicTransform:
    if isinstance(op, Flip):
        return {"horizontal": A.HorizontalFlip, "vertical": A.VerticalFlip}[op.axis](p=op.p)
    if isinstance(op, Rot90):
        return A.RandomRotate90(p=op.p)
    if isinstance(op, Affine):
        return A.Affine(rotate=op.rotate, scale=op.scale, border_mode=BORDERS[op.border], p=op.p)
    if isinstance(op, BrightnessContrast):
        return A.RandomBrightnessContrast(brightness_limit=op.brightness, contrast_limit=op.contrast, p=op.p)
    if isinstance(op, Gamma):
        return A.RandomGamma(gamma_limit=(100 * op.gamma[0], 100 * op.gamma[1]), p=op.p)
    if isinstance(op, GaussianBlur):
        return A.GaussianBlur(blur_limit=(op.ksize, op.ksize), sigma_limit=op.sigma, p=op.p)
    if isinstance(op, GaussNoise):
        return A.GaussNoise(std_range=op.std, p=op.p)
    raise TypeError(f"no albumentations transform for {op!r}")


def build_train_augment(cfg: AugmentConfig) -> A.Compose | None:
    plan = augment_plan(cfg)
    return albumentations_compose(plan) if plan is not None else None


def apply_augment(augment: A.Compose, image: np.ndarray, seed: int) -> np.ndarray:
    """Augment one (H, W, C) float32 image with its own seed: same (seed) → same result anywhere.

    Seeding per sample (from run seed, epoch and index) makes augmentation independent of the
    worker count and of where a resumed run restarts. The pipeline's transforms share one pair of
    generators seeded with ``seed``, so each draws its own numbers in turn. Not
    ``Compose.set_random_seed``: in albumentations 2.0.8 it seeds every transform's generators with
    the same seed, so all transforms draw the same numbers: both flips or neither (never a mirror
    image), the affine warp and brightness/contrast exactly when the flips, gamma's exponent equal to
    the contrast factor.
    """
    augment.set_random_state(np.random.default_rng(seed), random.Random(seed))
    out = augment(image=image)["image"]
    return np.ascontiguousarray(out, dtype=np.float32)
