"""Things in every culture image that are not the cells being scored.

Out-of-focus floating cells and debris ("ghosts"): soft discs with a faint ring, above the focal
plane. Scratches and fibres on the dish: long thin lines. Both appear in every class with
class-blind counts. A texture statistic confuses ghosts with rounded cells and lines with the
edges of spindle cells; a model looking at whole cells (sharp, with halo and nucleus) does not.
"""

from __future__ import annotations

import numpy as np

from mscvision.synth.optics import blur


def ghosts(rng, shape: tuple[int, int], per_crop: float) -> np.ndarray:
    """Intensity offsets of blurred discs (bright or dark), in relative units."""
    out = np.zeros(shape, np.float32)
    k = rng.poisson(per_crop * shape[0] * shape[1] / 128 ** 2)
    if k == 0:
        return out
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    for cy, cx, r, a in zip(rng.uniform(0, shape[0], k), rng.uniform(0, shape[1], k),
                            rng.uniform(4, 10, k), rng.uniform(-0.25, 0.35, k)):
        y0, y1 = int(max(cy - r - 1, 0)), int(min(cy + r + 2, shape[0]))
        x0, x1 = int(max(cx - r - 1, 0)), int(min(cx + r + 2, shape[1]))
        d = np.hypot(y[y0:y1, x0:x1] - cy, x[y0:y1, x0:x1] - cx)
        out[y0:y1, x0:x1] += a * (np.clip(r - d, 0, 1) - 0.6 * np.exp(-((d - r) ** 2) / 2))
    return blur(out, rng.uniform(1.5, 3.5))


def scratches(rng, shape: tuple[int, int], per_crop: float) -> np.ndarray:
    """Optical thickness of thin straight or gently curved lines (dish scratches, fibres)."""
    out = np.zeros(shape, np.float32)
    k = rng.poisson(per_crop * shape[0] * shape[1] / 128 ** 2)
    for _ in range(k):
        length = rng.uniform(20, 120)
        t = np.linspace(-0.5, 0.5, int(length * 2))
        angle = rng.uniform(0, np.pi) + rng.uniform(-0.3, 0.3) * t
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        ys = np.clip((cy + length * np.cumsum(np.sin(angle)) / len(t)).astype(int), 0, shape[0] - 1)
        xs = np.clip((cx + length * np.cumsum(np.cos(angle)) / len(t)).astype(int), 0, shape[1] - 1)
        out[ys, xs] = rng.uniform(0.3, 0.9) * rng.choice([-1.0, 1.0])
    return blur(out, 0.6)
