"""Two-channel fluorescence: nuclei (DAPI-like) and cytoskeleton (phalloidin-like actin).

Spindle cells carry stress fibres along their axis, spread cells criss-crossing bundles, rounded
cells a bright cortical ring and a condensed nucleus. Lipid droplets exclude actin (dark holes
around the nucleus); chondrogenic matrix gives a faint haze; debris is weakly autofluorescent
in both channels.
"""

from __future__ import annotations

import numpy as np

from mscvision.synth.cells import Patch
from mscvision.synth.optics import blur, draw_spots
from mscvision.synth.organelles import Organelles
from mscvision.synth.scene import Canvas, Cell


def _fibres(rng, p: Patch, families: int) -> np.ndarray:
    """Thin parallel lines at the cell's angle (and, for spread cells, at other angles too)."""
    h, w = p.mask.shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.zeros((h, w), np.float32)
    for k in range(families):
        angle = p.angle + (rng.uniform(-0.2, 0.2) if k == 0 else rng.uniform(0.5, 2.6))
        v = -x * np.sin(angle) + y * np.cos(angle)
        period = rng.uniform(3.0, 5.5)
        wave = np.cos(2 * np.pi * v / period + rng.uniform(0, 6.3)) + 0.6 * np.cos(2 * np.pi * v / (period * 1.7))
        out += np.clip(wave - 0.6, 0, None)
    return out / families


def _cell_channels(rng, cells: list[Cell], canvas: Canvas):
    nuc = np.zeros(canvas.shape, np.float32)
    actin = np.zeros(canvas.shape, np.float32)
    for c in cells:
        p = c.patch
        win = canvas.window(p)
        if win is None:
            continue
        big, small = win
        if p.bright:  # rounded: cortical ring, condensed bright chromatin
            ring = p.mask * (1 - p.thick ** 2)
            actin[big] += (0.3 * p.mask + 1.2 * ring)[small] * rng.uniform(0.7, 1.1)
            nuc[big] += 1.5 * p.nucleus[small] * rng.uniform(0.8, 1.2)
            continue
        fib = _fibres(rng, p, 1 if c.morph == 0 else 3)
        actin[big] += (p.mask * (0.25 + 0.9 * fib))[small] * rng.uniform(0.7, 1.1)
        nuc[big] += p.nucleus[small] * rng.uniform(0.6, 1.0)
    return nuc, actin


def fluorescence(rng, cells: list[Cell], org: Organelles, canvas: Canvas, matrix: np.ndarray):
    """Relative intensities (background ~ 0.05, stained structures ~ 1) of the nucleus and actin channels."""
    nuc, actin = _cell_channels(rng, cells, canvas)
    chromatin = 1 + 0.3 * blur(rng.normal(0, 1, nuc.shape).astype(np.float32), 1.2)
    nuc *= chromatin
    holes = np.zeros_like(actin)
    draw_spots(holes, org.droplets)
    actin *= np.clip(1 - holes, 0, 1)
    draw_spots(nuc, org.nucleoli, gain=-0.3)
    actin += 0.12 * matrix
    glow = np.zeros_like(actin)
    draw_spots(glow, org.specks, dome=False)
    psf = rng.uniform(0.7, 1.6)
    return [blur(ch + rng.uniform(0.05, 0.2) * glow, psf) + rng.uniform(0.02, 0.08) for ch in (nuc, actin)]
