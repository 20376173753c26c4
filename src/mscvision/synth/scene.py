"""Where the cells go and which state each one is in.

A scene is a canvas larger than the output image (cells at the border are cut by the image edge
the way a microscope field cuts them, and blur has room to wrap without reaching the image).
The canvas is split into zones (one for a crop, a Voronoi mosaic for a whole well); each zone
has target area fractions per state, and cells are added while the zone's area budget - set by
its confluence, drawn independently of class - is not spent. Because the budget is in area, not
cell count, a crop of big flattened cells and a crop of small rounded ones cover about the same
fraction of the image: foreground fraction carries no class information.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mscvision.synth.cells import Patch, PolygonShape, RoundShape, SpindleShape
from mscvision.synth.labels import DIFFERENTIATION_CLASSES, MORPHOLOGY_CLASSES, Donor

SPINDLE, FLATTENED, ROUNDED = range(3)
UNDIFF, ADIPO, OSTEO, CHONDRO = range(4)
MARGIN = 48  # canvas border around the image: larger than the biggest cell's half-extent


@dataclass
class Zone:
    morph_target: np.ndarray  # area fractions per morphology state
    diff_target: np.ndarray  # area fractions per differentiation state
    budget: float  # cell area to place, px^2
    dominant: tuple[int, int]
    morph_area: np.ndarray = field(default_factory=lambda: np.zeros(len(MORPHOLOGY_CLASSES)))
    diff_area: np.ndarray = field(default_factory=lambda: np.zeros(len(DIFFERENTIATION_CLASSES)))
    clusters: list = field(default_factory=list)  # chondrogenic nodules: [y, x, cells so far]

    def spent(self) -> bool:
        return self.morph_area.sum() >= self.budget

    def sample_state(self, rng) -> tuple[int, int]:
        """Draw the state whose area is furthest behind its target, so fractions land near target."""
        return (_behind(rng, self.morph_target * self.budget - self.morph_area),
                _behind(rng, self.diff_target * self.budget - self.diff_area))


def _behind(rng, deficit: np.ndarray) -> int:
    p = np.cumsum(np.clip(deficit, 0, None))
    if p[-1] <= 0:
        return int(np.argmax(deficit))
    return int(np.searchsorted(p, rng.random() * p[-1], side="right"))


@dataclass
class ZonePlan:
    """A field's Voronoi mosaic: each zone is the canvas region nearest its seed."""

    seeds: np.ndarray  # (k, 2) canvas (y, x) of each zone's seed
    zones: list[Zone]
    reach: float = 96  # how far place_cells may move a cell from its drawn position, px

    def zone_of(self, y: float, x: float) -> int:
        return int(nearest_seed(self.seeds, np.array([y]), np.array([x]))[0])


def nearest_seed(seeds: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Index of the seed nearest each (y, x): which Voronoi zone a position is in."""
    return np.argmin((ys[:, None] - seeds[None, :, 0]) ** 2 + (xs[:, None] - seeds[None, :, 1]) ** 2, axis=1)


def voronoi_owner(seeds: np.ndarray, side: int, step: int = 8) -> np.ndarray:
    """(side/step, side/step) zone index on a coarse grid of the canvas: zone areas without a full raster."""
    ys, xs = np.mgrid[0:side:step, 0:side:step]
    return nearest_seed(seeds, ys.ravel(), xs.ravel()).reshape(ys.shape)


@dataclass
class Cell:
    patch: Patch
    morph: int
    diff: int


def mixture(rng, dominant: int, k: int) -> np.ndarray:
    """Mostly one state with a realistic minority: pure in a third of images, else 5-35% others."""
    frac = np.zeros(k)
    minority = 0.0 if rng.random() < 0.33 else rng.uniform(0.05, 0.35)
    others = [j for j in range(k) if j != dominant]
    frac[others] = minority * rng.dirichlet(np.ones(len(others)))
    frac[dominant] = 1.0 - minority
    return frac


def sample_shape(rng, morph: int, diff: int, scale: float):
    """Body plan by morphology, modulated by differentiation (osteogenic: cuboidal, squat)."""
    if morph == SPINDLE:
        squat = {OSTEO: 0.7, CHONDRO: 0.8}.get(diff, 1.0)
        return SpindleShape.sample(rng, scale, squat)
    if morph == FLATTENED:
        return PolygonShape.sample(rng, scale, cuboidal=diff in (OSTEO, CHONDRO))
    return RoundShape.sample(rng, scale)


class Canvas:
    """Occupancy bookkeeping for placing cells without piling them on top of each other."""

    def __init__(self, height: int, width: int):
        self.occ = np.zeros((height, width), np.float32)
        self.shape = (height, width)

    def window(self, p: Patch):
        """Slices of the canvas and of the patch where they overlap (None if they do not)."""
        h, w = p.mask.shape
        y0, x0 = max(p.y0, 0), max(p.x0, 0)
        y1, x1 = min(p.y0 + h, self.shape[0]), min(p.x0 + w, self.shape[1])
        if y0 >= y1 or x0 >= x1:
            return None
        return (slice(y0, y1), slice(x0, x1)), (slice(y0 - p.y0, y1 - p.y0), slice(x0 - p.x0, x1 - p.x0))

    def overlap(self, p: Patch) -> float:
        win = self.window(p)
        if win is None:
            return 1.0
        return float((self.occ[win[0]] * p.mask[win[1]]).sum() / max(p.area, 1.0))

    def add(self, p: Patch) -> None:
        win = self.window(p)
        if win is not None:
            self.occ[win[0]] += p.mask[win[1]]


def place_cells(rng, zones: list[Zone], zone_of, canvas: Canvas, scale: float,
                first_at: tuple[float, float] | None = None, max_attempts: int = 1500,
                reach: float = 96) -> list[Cell]:
    """Fill every zone's area budget with cells; ``zone_of(y, x)`` maps a position to its zone.

    With ``first_at`` (crops), the first cell is of the zone's dominant state and sits in view,
    so an image's label is never carried by cells in the margin alone. Positions are drawn
    first and states second, so a zone's cells land where the zone is; a cell that does not fit
    at its drawn position is tried up to ``reach`` px away (small zones need a small reach, or
    their cells spill into the neighbours).
    """
    cells: list[Cell] = []
    h, w = canvas.shape
    attempts = 0
    while attempts < max_attempts and not all(z.spent() for z in zones):
        attempts += 1
        y, x = first_at if (first_at and not cells) else (rng.uniform(0, h), rng.uniform(0, w))
        zone = zones[zone_of(y, x)]
        if zone.spent():
            continue
        morph, diff = zone.dominant if not cells and first_at else zone.sample_state(rng)
        shape = sample_shape(rng, morph, diff, scale * float(np.exp(rng.normal(0, 0.1))))
        patch = shape.render((rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5)))
        patch = _find_spot(rng, canvas, patch, zone, diff, (y, x), reach)
        if patch is None:
            continue
        canvas.add(patch)
        zone.morph_area[morph] += patch.area
        zone.diff_area[diff] += patch.area
        cells.append(Cell(patch, morph, diff))
    return cells


def _find_spot(rng, canvas: Canvas, patch: Patch, zone: Zone, diff: int, yx, reach: float) -> Patch | None:
    """Try a few positions; chondrogenic cells condense into nodules, the rest avoid each other."""
    chondro = diff == CHONDRO
    if chondro:
        if not zone.clusters or rng.random() < 0.08:
            zone.clusters.append([yx[0], yx[1], 0])
        cluster = zone.clusters[int(rng.integers(len(zone.clusters)))]
        spread = np.sqrt(patch.area / np.pi) * (0.8 + 0.5 * np.sqrt(cluster[2]))
    best, best_overlap = None, 0.35 if not chondro else 0.6
    for attempt in range(10):
        if chondro:
            cy, cx = cluster[0] + rng.normal(0, spread), cluster[1] + rng.normal(0, spread)
        else:
            near = min(reach, canvas.shape[0] / 2)  # stay near the drawn position: in a field, that is its zone
            cy, cx = yx if attempt == 0 else (yx[0] + rng.uniform(-near, near), yx[1] + rng.uniform(-near, near))
        cand = patch.shifted(int(cy), int(cx))
        ov = canvas.overlap(cand)
        if ov < best_overlap:
            best, best_overlap = cand, ov
        if ov < (0.05 if not chondro else 0.25):
            break
    if best is not None and chondro:
        cluster[2] += 1
    return best


def crop_areas(cells: list[Cell], box: tuple[int, int, int, int]) -> np.ndarray:
    """Mask area of each cell inside the image box (y0, x0, y1, x1) of the canvas."""
    y0, x0, y1, x1 = box
    areas = np.zeros(len(cells))
    for i, c in enumerate(cells):
        p = c.patch
        h, w = p.mask.shape
        ya, yb = max(y0, p.y0), min(y1, p.y0 + h)
        xa, xb = max(x0, p.x0), min(x1, p.x0 + w)
        if ya < yb and xa < xb:
            areas[i] = p.mask[ya - p.y0:yb - p.y0, xa - p.x0:xb - p.x0].sum()
    return areas


def state_fractions(cells: list[Cell], areas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cell-area fractions per state of each task (overlapping cells each count their own area)."""
    morph = np.zeros(len(MORPHOLOGY_CLASSES))
    diff = np.zeros(len(DIFFERENTIATION_CLASSES))
    for c, a in zip(cells, areas):
        morph[c.morph] += a
        diff[c.diff] += a
    total = max(morph.sum(), 1e-9)
    return morph / total, diff / total


def enforce_dominance(cells: list[Cell], box, dominant: tuple[int, int], least: float = 0.55) -> list[Cell]:
    """Drop minority cells until the planned state holds >= ``least`` of the image's cell area.

    Cells in the margin are placed without regard to the image, so the realised mixture inside
    the image can drift from the plan; removing the biggest offender keeps label = majority.
    """
    cells = list(cells)
    while True:
        areas = crop_areas(cells, box)
        fracs = state_fractions(cells, areas)
        task = next((t for t in (0, 1) if fracs[t][dominant[t]] < least), None)
        if task is None:
            return cells
        state = lambda c: c.morph if task == 0 else c.diff  # noqa: E731
        offenders = [i for i, c in enumerate(cells) if state(c) != dominant[task] and areas[i] > 0]
        if not offenders:
            return cells
        cells.pop(max(offenders, key=lambda i: areas[i]))
