"""Synthetic lots with known truth: whole-well fields whose state fractions are chosen, for QC.

    from mscvision.synth.lot import generate_lot
    generate_lot("data/lot", wells=24, field_size=2048, tile=128, seed=0)   # -> data/lot/layout.csv

Each well is one 16-bit phase-contrast field, written as a tiled zlib TIFF with its pixel size.
Its cells are laid out in a Voronoi mosaic of small zones (about 1-3 tiles across); every zone has
a dominant state per task, and zones are dealt to states so that the field's **tile-dominant**
fractions land on the well's targets: differentiated and flattened cells come in patches, as
colonies and nodules do, not one cell per tile.

Truth is written in the QC criterion's unit (docs: design/QC_DESIGN.md): the field is cut into
tiles of ``tile`` px (``tile_boxes``, the grid of ``core.tiling.tile_grid``: no overlap, last row
and column aligned to the edge); a tile's state per task is the state with the largest cell area
inside it (overlapping cells each count their own area, as in the manifest), and a tile is
*tissue* when its cell-area coverage is at least ``min_coverage``. "fraction TASK=CLASS" is the
share of tissue tiles whose dominant state is CLASS. Cell-area fractions of the whole field are
written beside it, for information.

Files: ``images/<lot>_<well>.tif``, ``truth_tiles.csv`` (one row per tile), ``truth.csv`` (one row
per well), ``lot.json`` (the parameters) and, last, ``layout.csv`` (``path,well,lot``, paths
relative to the folder), so a folder being (re)generated never looks complete.

**Unseen donors.** A training set of n images has donors ``build_donor(seed, i)`` for
``i < donor_count(n) = max(8, n / 100)``. A lot's donors are ``build_donor(seed, LOT_DONOR_BASE +
lot index)``: the donor's appearance stream ``SeedSequence([seed, tag, index])`` can only coincide
with a training donor's if a training set had over 10**8 images (for the same seed; other seeds
give other streams), and the name (``donor1000000``...) says so. One donor per lot, as a
manufacturing lot is one donor's expansion. Each well's image stream is
``SeedSequence([seed, _WELL_TAG, well index])``, never ``[seed, i]`` as a training image's.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mscvision.core.errors import ConfigError
from mscvision.core.fileio import write_json_atomic, write_text_atomic
from mscvision.core.imageio import write_tiled_tiff
from mscvision.synth.dataset import GENERATOR_VERSION, PIXEL_SIZE_UM
from mscvision.synth.labels import DIFFERENTIATION_CLASSES, MORPHOLOGY_CLASSES, build_donor
from mscvision.synth.render import render_field
from mscvision.synth.scene import Cell, Zone, ZonePlan, voronoi_owner

TASKS = {"morphology": MORPHOLOGY_CLASSES, "differentiation": DIFFERENTIATION_CLASSES}
BASE = {"morphology": "spindle", "differentiation": "undifferentiated"}  # a clean MSC culture
LOT_DONOR_BASE = 1_000_000  # lot donors' indices: beyond any training set's (see the module docstring)
MIN_COVERAGE = 0.05  # a tile with less cell area than this is background, not tissue
MAX_WELLS = 96
_WELL_TAG = 0x107_5EED
_PLAN_TAG = 0x107_9A11
_WELLS_PER_ROW = 6  # wells are named like a plate: A1..A6, B1..B6, ...
# At most this share of a zone's cell area is in other states (scattered cells), per task. Flattened
# cells are big and win the tiles they sit in: more would make "clean" wells read several % flattened.
_MINORITY = {"morphology": 0.03, "differentiation": 0.06}
_CONFLUENCE = (0.25, 0.55)
_STEP = 8  # px per cell of the grid zones are measured on
# How far (px at magnification 1) a state's cells reach past their zone's edge and win the tiles
# there, for dealing zones: flattened cells are ~10x a spindle's area (radius 26-36 px).
_SPILL = {"flattened": 8.0}  # a well's confluence; each zone varies +-15% around it
LAYOUT, TRUTH, TRUTH_TILES, LOT_JSON = "layout.csv", "truth.csv", "truth_tiles.csv", "lot.json"


@dataclass(frozen=True)
class WellTarget:
    """The tile-dominant fractions a well is rendered to: one value per class, per task, summing to 1."""

    morphology: tuple[float, ...]
    differentiation: tuple[float, ...]
    kind: str = "given"  # "clean" | "high" | "borderline" (the default plan) | "given"

    def of(self, task: str) -> np.ndarray:
        return np.array(getattr(self, task))


def default_plan(wells: int, seed: int) -> list[WellTarget]:
    """Clean, high (10-30 %) and borderline (3-7 %) wells in equal shares, shuffled.

    Clean: <= 1.5 % of tiles in any state but spindle / undifferentiated. High and borderline
    wells move differentiation (into one lineage), morphology (to flattened) or both; the other
    task stays clean. Against "undifferentiated >= 0.95" / "flattened <= 0.05" this gives every
    verdict: clean wells pass, high ones fail, borderline ones straddle the limit.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, _PLAN_TAG]))
    ranges = {"clean": (0.0, 0.015), "high": (0.10, 0.30), "borderline": (0.03, 0.07)}
    plan = []
    for i in range(wells):
        kind = ("clean", "high", "borderline")[i % 3]
        moved = ("differentiation", "morphology", "both")[(i // 3) % 3]
        shares = {}
        for task in TASKS:
            lo, hi = ranges[kind] if kind == "clean" or moved in (task, "both") else ranges["clean"]
            cls = "flattened" if task == "morphology" else DIFFERENTIATION_CLASSES[1 + int(rng.integers(3))]
            shares[f"{task}={cls}"] = float(rng.uniform(lo, hi))
        plan.append(_target(shares, kind, f"plan well {i}"))
    return [plan[j] for j in rng.permutation(wells)]


def parse_plan(entries, where: str = "lot plan") -> list[WellTarget]:
    """Explicit targets: one ``{"TASK=CLASS": fraction, ...}`` per well, e.g.
    ``[{}, {"differentiation=osteogenic": 0.2}, {"morphology=flattened": 0.05}]``. A task's base
    class (spindle, undifferentiated) takes what the named classes leave."""
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: give a non-empty list with one object of 'TASK=CLASS': fraction per well")
    return [_target(e, "given", f"{where}, well {i}") for i, e in enumerate(entries)]


def read_plan(path) -> list[WellTarget]:
    """``parse_plan`` of a JSON file."""
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--lot-plan {path}: cannot be read as JSON ({exc}). Fix: a JSON list such as "
                          '[{}, {"differentiation=osteogenic": 0.2}]') from exc
    return parse_plan(entries, f"--lot-plan {path}")


def _target(shares, kind: str, where: str) -> WellTarget:
    if not isinstance(shares, dict):
        raise ConfigError(f"{where}: {shares!r} is not an object of 'TASK=CLASS': fraction")
    vectors = {task: np.zeros(len(classes)) for task, classes in TASKS.items()}
    named = {task: False for task in TASKS}
    for key, value in shares.items():
        task, _, cls = str(key).partition("=")
        if task not in TASKS or cls not in TASKS[task]:
            raise ConfigError(f"{where}: unknown {key!r}. Fix: TASK=CLASS with TASK and CLASS from {TASKS}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ConfigError(f"{where}: {key} = {value!r}; a fraction is a number in 0..1")
        vectors[task][TASKS[task].index(cls)] = float(value)
        named[task] |= cls == BASE[task]
    for task, v in vectors.items():
        base = TASKS[task].index(BASE[task])
        if named[task]:
            if abs(v.sum() - 1) > 1e-6:
                raise ConfigError(f"{where}: the {task} fractions sum to {v.sum():g}; naming {BASE[task]} "
                                  "too, they must sum to 1 (or leave it out to take the rest)")
        elif v.sum() > 1 + 1e-9:
            raise ConfigError(f"{where}: the {task} fractions sum to {v.sum():g}, more than 1")
        else:
            v[base] = max(0.0, 1 - v.sum())
    return WellTarget(tuple(vectors["morphology"]), tuple(vectors["differentiation"]), kind)


def tile_boxes(height: int, width: int, tile: int) -> list[tuple[int, int, int, int, int, int]]:
    """(row, col, y0, x0, y1, x1) of the tiles covering the image, no overlap, the last row and
    column aligned to the edge (so they overlap the one before): ``core.tiling.tile_grid``'s grid."""
    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        s = list(range(0, n - tile + 1, tile))
        return s + ([n - tile] if s[-1] + tile < n else [])

    return [(r, c, y, x, min(y + tile, height), min(x + tile, width))
            for r, y in enumerate(starts(height)) for c, x in enumerate(starts(width))]


def lot_zones(rng, side: int, size: int, target: WellTarget, zone_px: float, scale: float = 1.0) -> ZonePlan:
    """Small Voronoi zones (mean side ``zone_px``) dealt to states so that the tiles they win inside
    the image match the target fractions; a well-wide confluence, so no state covers more tiles."""
    n = max(2, int(round(side * side / zone_px ** 2)))
    seeds = rng.uniform(0, side, (n, 2))
    owner = voronoi_owner(seeds, side, _STEP)
    canvas_area = np.bincount(owner.ravel(), minlength=n) * float(_STEP ** 2)
    lo, hi = (side - size) // 2 // _STEP, ((side - size) // 2 + size) // _STEP
    inside = owner[lo:hi, lo:hi]
    states = {}
    for task, classes in TASKS.items():
        grow = [int(round(_SPILL.get(c, 0.0) * scale / _STEP)) for c in classes]
        states[task] = deal_zones(rng, inside, n, target.of(task), grow)
    confluence = rng.uniform(*_CONFLUENCE)
    zones = []
    for k in range(n):
        m, d = int(states["morphology"][k]), int(states["differentiation"][k])
        zones.append(Zone(_scattered(rng, m, 3, _MINORITY["morphology"]),
                          _scattered(rng, d, 4, _MINORITY["differentiation"]),
                          confluence * rng.uniform(0.85, 1.15) * canvas_area[k], (m, d)))
    return ZonePlan(seeds, zones, reach=max(16.0, zone_px / 8))


def deal_zones(rng, inside: np.ndarray, n: int, target: np.ndarray, grow: list[int]) -> np.ndarray:
    """A state for each of ``n`` zones, ``inside`` being the image's zone-index grid.

    Zones in random order go to the minority state furthest from its target when that brings it
    closer (what the zone adds < 2 x what the state still needs), else to the majority state. What
    a zone adds to a state is its area grown by ``grow[state]`` grid cells (big cells reach past the
    zone's edge and win the tiles there), less what that state's zones already hold. Zones wholly
    in the margin draw their state from the target (their cells only reach the image's edge).
    """
    major = int(np.argmax(target))
    need = target.astype(float) * inside.size
    need[major] = 0.0
    held = np.zeros((len(target), *inside.shape), bool)
    state = np.full(n, major)
    for k in rng.permutation(n):
        mine = inside == k
        if not mine.any():
            state[k] = int(rng.choice(len(target), p=target / target.sum()))
            continue
        for c in np.argsort(-need, kind="stable"):
            if need[c] <= 0:
                break
            claim = held[c] | _dilate(mine, grow[c])
            gain = float(claim.sum() - held[c].sum())
            if gain < 2 * need[c]:
                state[k], need[c], held[c] = c, need[c] - gain, claim
                break
    return state


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """``mask`` grown by ``r`` cells (a square), with shifts: numpy only, no scipy at the station."""
    out = mask.copy()
    for axis in (0, 1):
        grown = out.copy()
        for d in range(1, r + 1):
            grown |= np.roll(out, d, axis) & _edge(out.shape, axis, d)
            grown |= np.roll(out, -d, axis) & _edge(out.shape, axis, -d)
        out = grown
    return out


def _edge(shape, axis: int, d: int) -> np.ndarray:
    """False where np.roll by ``d`` wrapped round, so growth does not leak across the border."""
    keep = np.ones(shape[axis], bool)
    if d > 0:
        keep[:d] = False
    else:
        keep[d:] = False
    return keep[:, None] if axis == 0 else keep[None, :]


def _scattered(rng, dominant: int, k: int, most: float) -> np.ndarray:
    """A zone's area fractions: its state, plus up to ``most`` in scattered cells of the others."""
    frac = np.zeros(k)
    minority = rng.uniform(0, most)
    others = [j for j in range(k) if j != dominant]
    frac[others] = minority * rng.dirichlet(np.ones(len(others)))
    frac[dominant] = 1.0 - minority
    return frac


def tile_truth(cells: list[Cell], boxes, offset: int, min_coverage: float = MIN_COVERAGE) -> dict:
    """Per tile: cell area per state of each task, coverage, dominant state and tissue flag.

    ``boxes`` are image coordinates; the cells' patches are on the canvas, ``offset`` px further.
    Coverage is the summed cell-mask area over the tile area, capped at 1.
    """
    b = np.array([box[2:] for box in boxes], np.int64) + offset
    morph = np.zeros((len(b), len(MORPHOLOGY_CLASSES)))
    diff = np.zeros((len(b), len(DIFFERENTIATION_CLASSES)))
    for c in cells:
        p = c.patch
        h, w = p.mask.shape
        for t in np.nonzero((b[:, 0] < p.y0 + h) & (b[:, 2] > p.y0) & (b[:, 1] < p.x0 + w) & (b[:, 3] > p.x0))[0]:
            ya, yb = max(b[t, 0], p.y0), min(b[t, 2], p.y0 + h)
            xa, xb = max(b[t, 1], p.x0), min(b[t, 3], p.x0 + w)
            area = float(p.mask[ya - p.y0:yb - p.y0, xa - p.x0:xb - p.x0].sum())
            morph[t, c.morph] += area
            diff[t, c.diff] += area
    tile_area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    coverage = np.minimum(1.0, morph.sum(axis=1) / tile_area)
    return {"morphology": morph, "differentiation": diff, "coverage": coverage,
            "tissue": coverage >= min_coverage}


def well_names(wells: int) -> list[str]:
    return [f"{chr(ord('A') + i // _WELLS_PER_ROW)}{i % _WELLS_PER_ROW + 1}" for i in range(wells)]


def _check(wells: int, lots: int, field_size: int, tile: int, workers: int, min_coverage: float,
           bit_depth: int) -> None:
    if not 1 <= wells <= MAX_WELLS:
        raise ConfigError(f"--wells {wells}: use 1..{MAX_WELLS}")
    if not 1 <= lots <= wells:
        raise ConfigError(f"--lots {lots}: use 1..{wells} (each lot holds at least one of the {wells} wells)")
    if not 256 <= field_size <= 8192:
        raise ConfigError(f"--field-size {field_size}: use 256..8192 px")
    if not 16 <= tile <= field_size // 2:
        raise ConfigError(f"--tile {tile}: use 16..{field_size // 2} px (at least 2x2 tiles per field)")
    if workers < 1:
        raise ConfigError(f"--workers {workers}: use 1 or more")
    if not 0 < min_coverage < 1:
        raise ConfigError(f"--min-coverage {min_coverage}: a cell-area coverage strictly between 0 and 1")
    if bit_depth not in (8, 16):
        raise ConfigError(f"--bit-depth {bit_depth}: use 8 or 16")


def generate_lot(out_dir, wells: int | None = None, lots: int = 1, field_size: int = 2048, tile: int = 128,
                 seed: int = 0, workers: int = 1, plan: list[WellTarget] | None = None,
                 min_coverage: float = MIN_COVERAGE, bit_depth: int = 16) -> Path:
    """Render ``wells`` fields (default 24) in ``lots`` lots (contiguous, as even as can be); return
    layout.csv's path.

    ``plan`` (one ``WellTarget`` per well; ``parse_plan``) replaces ``default_plan(wells, seed)``
    and sets the number of wells. Output is byte-identical for any ``workers``.
    """
    if plan is not None:
        if wells is not None and wells != len(plan):
            raise ConfigError(f"--wells {wells} but the lot plan has {len(plan)} wells: give one or the other")
        wells = len(plan)
    wells = 24 if wells is None else wells
    _check(wells, lots, field_size, tile, workers, min_coverage, bit_depth)
    plan = plan if plan is not None else default_plan(wells, seed)
    out = Path(out_dir)
    (out / LAYOUT).unlink(missing_ok=True)  # a folder being (re)generated must not look complete
    lot_of = np.repeat(np.arange(lots), [len(a) for a in np.array_split(np.arange(wells), lots)])
    names = well_names(wells)
    jobs = [(str(out), seed, i, names[i], f"L{lot_of[i] + 1}", LOT_DONOR_BASE + int(lot_of[i]), plan[i],
             field_size, tile, min_coverage, bit_depth) for i in range(wells)]
    if workers == 1:
        results = [render_well(job) for job in jobs]
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = pool.map(render_well, jobs, chunksize=1)
    _write_csv(out / TRUTH_TILES, truth_tiles_columns(), [r for _, tiles in results for r in tiles])
    _write_csv(out / TRUTH, truth_columns(), [row for row, _ in results])
    write_json_atomic(out / LOT_JSON, {
        "generator": "mscvision.synth.lot", "generator_version": GENERATOR_VERSION, "seed": seed,
        "wells": wells, "lots": lots, "field_size": field_size, "bit_depth": bit_depth, "modality": "phase",
        "pixel_size_um": PIXEL_SIZE_UM, "unit": "tiles", "tile_px": tile, "overlap_px": 0,
        "min_coverage": min_coverage, "donors": sorted({job[5] for job in jobs}),
        "plan": [asdict(t) for t in plan],
        "truth": "tile-dominant state by cell area over tissue tiles (coverage >= min_coverage); "
                 "cell-area fractions of the field beside it"})
    _write_csv(out / LAYOUT, ["path", "well", "lot"], [{k: row[k] for k in ("path", "well", "lot")}
                                                      for row, _ in results])
    return out / LAYOUT


def truth_columns() -> list[str]:
    cols = ["path", "well", "lot", "donor", "kind", "tiles", "tissue_tiles"]
    for prefix in ("target", "tile", "area"):
        cols += [f"{prefix}.{task}.{c}" for task, classes in TASKS.items() for c in classes]
    return cols


def truth_tiles_columns() -> list[str]:
    return ["path", "row", "col", "y0", "x0", "y1", "x1", "coverage", "morphology", "differentiation", "tissue"]


def render_well(job: tuple) -> tuple[dict, list[dict]]:
    """Render and write one well; return its truth row and its tiles' rows. Runs in worker processes."""
    out, seed, index, well, lot, donor_index, target, field_size, tile, min_coverage, bit_depth = job
    rng = np.random.default_rng(np.random.SeedSequence([seed, _WELL_TAG, index]))
    donor = build_donor(seed, donor_index)
    result = render_field(rng, donor, field_size, "phase", bit_depth,
                          planner=lambda r, side, scale: lot_zones(r, side, field_size, target, 2.0 * tile, scale))
    rel = f"images/{lot}_{well}.tif"
    write_tiled_tiff(Path(out) / rel, result.image, PIXEL_SIZE_UM)
    boxes = tile_boxes(field_size, field_size, tile)
    truth = tile_truth(result.cells, boxes, result.box[0], min_coverage)
    row = {"path": rel, "well": well, "lot": lot, "donor": donor.name, "kind": target.kind,
           "tiles": len(boxes), "tissue_tiles": int(truth["tissue"].sum())}
    tiles = []
    dominant = {}
    for task, classes in TASKS.items():
        area = truth[task]
        dominant[task] = np.where(area.sum(axis=1) > 0, area.argmax(axis=1), -1)
        counts = np.bincount(dominant[task][truth["tissue"]], minlength=len(classes))
        n = int(truth["tissue"].sum())
        fractions = {"target": target.of(task), "tile": counts / max(n, 1), "area": getattr(result, task)}
        for prefix, values in fractions.items():  # no tissue: no tile fraction (empty), not a zero
            row.update({f"{prefix}.{task}.{c}": f"{v:.6f}" if n or prefix != "tile" else ""
                        for c, v in zip(classes, values)})
    for t, (r, c, y0, x0, y1, x1) in enumerate(boxes):
        tiles.append({"path": rel, "row": r, "col": c, "y0": y0, "x0": x0, "y1": y1, "x1": x1,
                      "coverage": f"{truth['coverage'][t]:.4f}",
                      **{task: TASKS[task][dominant[task][t]] if dominant[task][t] >= 0 else "" for task in TASKS},
                      "tissue": int(truth["tissue"][t])})
    return row, tiles


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())
