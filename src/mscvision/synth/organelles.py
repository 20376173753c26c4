"""Small round things: nucleoli, granules, lipid droplets, mineral specks, debris.

All of them are lists of (y, x, radius, amplitude) drawn later as cached disc stamps. The
differentiation cues are mostly about *where* these sit, not what they look like: lipid droplets
and bright debris share one size/brightness distribution, and mineral specks and dark debris share
another - droplets fill the cytoplasm around the nucleus, mineral specks gather into nodules,
debris lies anywhere. A texture statistic sees the same spots in every class; a model that looks
at arrangement does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mscvision.synth.scene import ADIPO, OSTEO, ROUNDED, Cell


@dataclass
class Spots:
    """Columns y, x, radius, amplitude, gathered in chunks and joined when drawn."""

    chunks: list = field(default_factory=list)

    def add(self, y, x, r, a) -> None:
        y = np.atleast_1d(np.asarray(y, float))
        if y.size:
            self.chunks.append(np.stack([y, *(np.broadcast_to(np.asarray(v, float), y.shape) for v in (x, r, a))]))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if not self.chunks:
            return tuple(np.zeros(0) for _ in range(4))
        return tuple(np.concatenate(self.chunks, axis=1))


@dataclass
class Organelles:
    nucleoli: Spots = field(default_factory=Spots)  # dark (phase-dense) dots inside nuclei
    granules: Spots = field(default_factory=Spots)  # small phase-dense cytoplasmic granules
    droplets: Spots = field(default_factory=Spots)  # refractile: lipid droplets and bright debris
    specks: Spots = field(default_factory=Spots)  # absorbing: mineral and dark debris


def droplet_radii(rng, k: int, scale: float) -> np.ndarray:
    """Lipid-droplet size distribution (many small, a few coalesced large ones); reused by debris."""
    return np.clip(rng.lognormal(np.log(1.5 * scale), 0.35, k), 0.8, 4.0)


def speck_radii(rng, k: int) -> np.ndarray:
    return rng.uniform(0.5, 1.4, k)


def _inside(rng, patch, k: int, spread: float, keep_out_nucleus: bool):
    """k points near the nucleus that fall inside the cell body (box coordinates)."""
    ny, nx = patch.nucleus_yx
    ys = ny + rng.normal(0, spread, 6 * k)
    xs = nx + rng.normal(0, spread, 6 * k)
    iy, ix = ys.astype(int), xs.astype(int)
    h, w = patch.mask.shape
    ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    iy, ix, ys, xs = iy[ok], ix[ok], ys[ok], xs[ok]
    good = patch.mask[iy, ix] > 0.85
    if keep_out_nucleus:
        good &= patch.nucleus[iy, ix] < 0.2
    return ys[good][:k] + patch.y0, xs[good][:k] + patch.x0


def add_cell_organelles(rng, cells: list[Cell], scale: float, granularity: float, donor_droplet: float) -> Organelles:
    org = Organelles()
    for c in cells:
        p = c.patch
        size = np.sqrt(p.area / np.pi)
        if c.morph != ROUNDED:
            k = int(rng.integers(1, 4))
            ys, xs = _inside(rng, p, k, p.nucleus_r * 0.35, keep_out_nucleus=False)
            org.nucleoli.add(ys, xs, rng.uniform(0.8, 1.4, len(ys)) * scale, 1.0)
        k = rng.poisson(granularity * p.area / 60)
        ys, xs = _inside(rng, p, k, 0.45 * size, keep_out_nucleus=True)
        org.granules.add(ys, xs, rng.uniform(0.5, 1.0, len(ys)), rng.uniform(0.4, 1.0, len(ys)))
        if c.diff == ADIPO:  # droplets pack the cytoplasm around the nucleus
            k = int(np.clip(rng.normal(p.area / 25, p.area / 100), 8, 70))
            ys, xs = _inside(rng, p, k, 1.2 * p.nucleus_r + 0.15 * size, keep_out_nucleus=True)
            org.droplets.add(ys, xs, droplet_radii(rng, len(ys), scale * donor_droplet), rng.uniform(0.7, 1.0, len(ys)))
    return org


def add_mineral(rng, org: Organelles, cells: list[Cell], scale: float) -> None:
    """Osteogenic cells lay down mineral: dense nodules of dark granules over and around them."""
    for c in cells:
        if c.diff != OSTEO:
            continue
        p = c.patch
        cy, cx = p.y0 + p.nucleus_yx[0] + rng.normal(0, 6), p.x0 + p.nucleus_yx[1] + rng.normal(0, 6)
        k = int(rng.integers(40, 100))
        sigma = rng.uniform(3.5, 7.0) * scale
        org.specks.add(cy + rng.normal(0, sigma, k), cx + rng.normal(0, sigma, k), speck_radii(rng, k),
                       rng.uniform(0.5, 1.0, k))


def add_debris(rng, org: Organelles, shape: tuple[int, int], scale: float) -> None:
    """Debris and dust in every class: scattered dark specks and droplet-like refractile spots."""
    area = shape[0] * shape[1] / 128 ** 2
    for spots, kind, mean in ((org.specks, "dark", rng.uniform(0, 100)), (org.droplets, "bright", rng.uniform(0, 45))):
        k = rng.poisson(mean * area)
        radii = speck_radii(rng, k) if kind == "dark" else droplet_radii(rng, k, scale)
        spots.add(rng.uniform(0, shape[0], k), rng.uniform(0, shape[1], k), radii, rng.uniform(0.4, 1.0, k))
