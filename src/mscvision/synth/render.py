"""One image from one random stream: plan the scene, draw the maps, form the image, expose it.

``render_crop`` makes a training crop (one dominant state per task plus a minority);
``render_field`` makes a whole-well field: a Voronoi mosaic of zones, each with its own
dominant states, so that tiles of the field disagree the way regions of a real well do. The
zones are drawn from ``JOINT`` (``random_zones``) unless a planner is given: ``synth/lot.py``
plans small zones whose states hit a well's target fractions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mscvision.synth.artefacts import ghosts, scratches
from mscvision.synth.fluorescence import fluorescence
from mscvision.synth.labels import JOINT, Donor
from mscvision.synth.optics import (blur, draw_spots, expose, fluorescence_tone, illumination, phase_contrast,
                                    tone_curve)
from mscvision.synth.organelles import add_cell_organelles, add_debris, add_mineral
from mscvision.synth.scene import (CHONDRO, MARGIN, Canvas, Cell, Zone, ZonePlan, crop_areas, enforce_dominance,
                                   mixture, place_cells, state_fractions, voronoi_owner)

MODALITIES = ("phase", "fluorescence")


@dataclass
class Rendered:
    image: np.ndarray  # (H, W) phase or (H, W, 2) fluorescence; uint8 or uint16
    morphology: np.ndarray  # cell-area fraction per morphology state, sums to 1
    differentiation: np.ndarray  # cell-area fraction per differentiation state
    cells: list[Cell] | None = None  # fields: the placed cells, canvas coordinates (for per-tile truth)
    box: tuple[int, int, int, int] | None = None  # fields: the image's (y0, x0, y1, x1) on the canvas


def _coverage(rng) -> float:
    """Confluence: fraction of the canvas covered by cells, drawn independently of class."""
    return rng.uniform(0.18, 0.6)


def render_crop(rng, donor: Donor, dominant: tuple[int, int], size: int, modality: str, bit_depth: int) -> Rendered:
    scale = rng.uniform(0.8, 1.2) * donor.size  # magnification +-20%, times the donor's cell size
    side = size + 2 * MARGIN
    canvas = Canvas(side, side)
    zone = Zone(mixture(rng, dominant[0], 3), mixture(rng, dominant[1], 4), _coverage(rng) * side * side, dominant)
    first = tuple(MARGIN + size * rng.uniform(0.3, 0.7, 2))  # the dominant state is always in view
    cells = place_cells(rng, [zone], lambda y, x: 0, canvas, scale, first)
    box = (MARGIN, MARGIN, MARGIN + size, MARGIN + size)
    cells = enforce_dominance(cells, box, dominant)
    morph, diff = state_fractions(cells, crop_areas(cells, box))
    return Rendered(_form(rng, cells, canvas, donor, scale, modality, bit_depth, box), morph, diff)


def render_field(rng, donor: Donor, size: int, modality: str, bit_depth: int, zones: int = 9,
                 planner=None) -> Rendered:
    """A whole-well field; ``planner(rng, side, scale) -> ZonePlan`` lays out its zones (default
    ``random_zones``); ``scale`` is the field's magnification times the donor's cell size."""
    scale = rng.uniform(0.8, 1.2) * donor.size
    side = size + 2 * MARGIN
    canvas = Canvas(side, side)
    plan = planner(rng, side, scale) if planner is not None else random_zones(rng, side, zones)
    cells = place_cells(rng, plan.zones, plan.zone_of, canvas, scale,
                        max_attempts=int(40 * side * side / 128 ** 2), reach=plan.reach)
    box = (MARGIN, MARGIN, MARGIN + size, MARGIN + size)
    morph, diff = state_fractions(cells, crop_areas(cells, box))
    return Rendered(_form(rng, cells, canvas, donor, scale, modality, bit_depth, box), morph, diff, cells, box)


def random_zones(rng, side: int, zones: int) -> ZonePlan:
    """``zones`` Voronoi zones, each with dominant states drawn from ``JOINT`` and its own confluence."""
    seeds = rng.uniform(0, side, (zones, 2))
    zone_area = np.bincount(voronoi_owner(seeds, side).ravel(), minlength=zones) * 64.0
    plan = []
    for k in range(zones):
        m, d = divmod(int(rng.choice(JOINT.size, p=JOINT.ravel())), JOINT.shape[1])
        plan.append(Zone(mixture(rng, m, 3), mixture(rng, d, 4), _coverage(rng) * zone_area[k], (m, d)))
    return ZonePlan(seeds, plan)


def _form(rng, cells: list[Cell], canvas: Canvas, donor: Donor, scale: float, modality: str, bit_depth: int, box):
    org = add_cell_organelles(rng, cells, scale, donor.granularity * rng.uniform(0.4, 1.6), donor.droplet_size)
    add_mineral(rng, org, cells, scale)
    add_debris(rng, org, canvas.shape, scale)
    maps = _maps(rng, cells, org, canvas, donor)
    y0, x0, y1, x1 = box
    light = illumination(rng, (y1 - y0, x1 - x0), float(max(y1 - y0, x1 - x0)))
    if modality == "phase":
        maps["opd"] += scratches(rng, canvas.shape, rng.uniform(0, 1.5))
        rel = phase_contrast(rng, maps, donor.halo, donor.background_texture)
        rel = tone_curve(rng, (rel + ghosts(rng, canvas.shape, rng.uniform(0, 8)))[y0:y1, x0:x1])
        return expose(rng, np.clip(rel, 0.02, None) * light, bit_depth)
    channels = fluorescence(rng, cells, org, canvas, maps["matrix"])
    return np.stack([expose(rng, fluorescence_tone(rng, ch[y0:y1, x0:x1]) * light, bit_depth)
                     for ch in channels], axis=-1)


def _maps(rng, cells: list[Cell], org, canvas: Canvas, donor: Donor) -> dict:
    opd = np.zeros(canvas.shape, np.float32)
    bright = np.zeros_like(opd)
    chondro = np.zeros_like(opd)
    nucleus_gain = 0.35 * donor.nucleus_contrast * rng.uniform(0.7, 1.3)
    for c in cells:
        win = canvas.window(c.patch)
        if win is None:
            continue
        big, small = win
        p = c.patch
        if p.bright:  # rounded cells: thick and refractile
            bright[big] += (p.thick * donor.roundness_brightness * rng.uniform(1.2, 1.8))[small]
            opd[big] += (0.3 * p.thick)[small]
        else:
            opd[big] += (p.thick * rng.uniform(0.8, 1.2) + nucleus_gain * p.nucleus)[small]
        if c.diff == CHONDRO:
            chondro[big] += p.mask[small]
    draw_spots(opd, org.nucleoli, gain=0.6 * donor.nucleus_contrast)
    draw_spots(opd, org.granules, gain=0.45)
    draw_spots(bright, org.droplets, gain=0.9)
    dark = np.zeros_like(opd)
    draw_spots(dark, org.specks, dome=False)
    matrix = np.zeros_like(opd)
    if chondro.any():  # dense cartilage-like matrix where chondrogenic cells crowd together
        matrix = np.clip((blur(chondro, 7.0) - 0.12) * 5, 0, 1)
        opd += rng.uniform(0.5, 0.8) * matrix  # a nodule of hyaline matrix: halo-ringed, homogeneous
        bright += 0.3 * np.clip(blur(chondro, 1.5) - chondro, 0, None) * matrix  # pericellular lacunae
    return {"opd": opd, "bright": bright, "dark": dark, "matrix": matrix}
