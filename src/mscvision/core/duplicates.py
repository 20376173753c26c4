"""Near-duplicate detection across a split by perceptual (average) hash.

Used when a data set has no groups: the same cell in two frames, or one field cropped twice, lands
on both sides of a random split and inflates every metric. A 64-bit average hash of the scaled
image is robust to noise and small intensity changes; Hamming distance ≤ ``max_distance`` counts
as a near-duplicate.
"""

from __future__ import annotations

import numpy as np

from mscvision.core.preprocess import resize


def average_hash(unit_image: np.ndarray, side: int = 8) -> np.ndarray:
    """(H, W, C) float image → ``side*side`` bits packed as uint8 (8 bytes for the default 8x8)."""
    small = resize(unit_image.mean(axis=2, keepdims=True), (side, side))[:, :, 0]
    return np.packbits(small.ravel() > small.mean())


def cross_split_near_duplicates(hashes: np.ndarray, split: np.ndarray, max_distance: int = 4,
                                chunk: int = 512) -> list[tuple[int, int, int]]:
    """(train row, held-out row, distance) for every train / non-train pair within ``max_distance``."""
    train = np.flatnonzero(split == "train")
    held = np.flatnonzero(split != "train")
    pairs = []
    for start in range(0, len(held), chunk):
        block = held[start:start + chunk]
        xor = hashes[train][:, None, :] ^ hashes[block][None, :, :]
        distance = np.unpackbits(xor, axis=2).sum(axis=2)
        for i, j in zip(*np.nonzero(distance <= max_distance)):
            pairs.append((int(train[i]), int(block[j]), int(distance[i, j])))
    return pairs
