"""Label sets, their joint distribution, donors, and which image gets which labels.

Morphology and differentiation are two label sets on the same image. The joint table below is
plausible (chondrogenic cultures are mostly rounded, osteogenic ones flattened/cuboidal) but
every morphology co-occurs with every differentiation state, so neither task is a relabelling
of the other. Both marginals are close to uniform so balanced accuracy is not dominated by one
class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MORPHOLOGY_CLASSES = ("spindle", "flattened", "rounded")
DIFFERENTIATION_CLASSES = ("undifferentiated", "adipogenic", "osteogenic", "chondrogenic")

# P(morphology, differentiation) of an image's dominant states; rows follow MORPHOLOGY_CLASSES,
# columns DIFFERENTIATION_CLASSES. Rows sum to ~1/3, columns to 1/4.
JOINT = np.array([
    [0.12, 0.07, 0.08, 0.06],
    [0.07, 0.10, 0.11, 0.05],
    [0.06, 0.08, 0.06, 0.14],
])
JOINT = JOINT / JOINT.sum()

_DONOR_TAG = 0x5EEDD0D0  # keeps donor seeds apart from per-image seeds [seed, index]
_PLAN_TAG = 0x5EED9A11


@dataclass(frozen=True)
class Donor:
    """A synthetic donor: a consistent appearance shift shared by all of its images."""

    name: str
    size: float  # cell-size factor
    halo: float  # phase halo strength factor
    granularity: float  # cytoplasmic granule density factor
    nucleus_contrast: float
    droplet_size: float
    roundness_brightness: float
    background_texture: float  # amplitude of the culture-dish background mottle


def build_donor(seed: int, index: int) -> Donor:
    rng = np.random.default_rng(np.random.SeedSequence([seed, _DONOR_TAG, index]))
    return Donor(f"donor{index:02d}", rng.uniform(0.9, 1.1), rng.uniform(0.75, 1.3), rng.uniform(0.5, 1.6),
                 rng.uniform(0.75, 1.3), rng.uniform(0.85, 1.15), rng.uniform(0.8, 1.2), rng.uniform(0.5, 1.5))


def donor_count(n: int) -> int:
    """About n/100 donors, never fewer than 8 (a group split needs several held-out donors)."""
    return max(8, int(round(n / 100)))


def plan_labels(n: int, seed: int) -> list[tuple[int, int, int]]:
    """(donor, morphology index, differentiation index) per image, from the seed alone.

    Image i belongs to donor i % D. Each donor's first images cycle through a covering set so
    that every donor shows every class of both tasks (given >= 4 images per donor); the rest are
    drawn from ``JOINT``.
    """
    d = donor_count(n)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _PLAN_TAG]))
    cover = [(0, 0), (1, 1), (2, 2), (2, 3), (0, 2), (1, 0), (2, 1), (0, 3)]
    flat = rng.choice(JOINT.size, size=n, p=JOINT.ravel())
    per_donor: dict[int, list[tuple[int, int]]] = {k: [] for k in range(d)}
    for i in range(n):
        per_donor[i % d].append(divmod(int(flat[i]), JOINT.shape[1]))
    for k, pairs in per_donor.items():
        m = min(len(pairs), len(cover))
        pairs[:m] = cover[:m]
        order = rng.permutation(len(pairs))  # so the covering set is not always the first images
        per_donor[k] = [pairs[j] for j in order]
    return [(i % d, *per_donor[i % d][i // d]) for i in range(n)]
