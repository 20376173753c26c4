"""The foreground measure that decides which tiles of a field the model sees (core/tiling.py).

Issue 17: a tile covered by flattened (senescent) cells read as background, so the skipped tiles were
not a random sample of the well and the flattened fraction was under-counted; and an empty tile with an
illumination gradient read as tissue. Both cases are rendered here with the synthetic generator's own
functions (synth/render.py, synth/optics.py), small enough to run in a second or two.
"""

from __future__ import annotations

import numpy as np
import pytest

from mscvision.core.tiling import _median, foreground_fraction, foreground_fractions, tile_grid
from mscvision.synth.labels import build_donor
from mscvision.synth.lot import LOT_DONOR_BASE, MIN_COVERAGE, WellTarget, lot_zones, tile_boxes, tile_truth
from mscvision.synth.optics import expose
from mscvision.synth.render import render_field

MIN_FOREGROUND = 0.05  # runtime/tiles.py DEFAULT_MIN_FOREGROUND: a tile below it is skipped as background
FIELD, TILE = 256, 128
ALL_FLATTENED = WellTarget((0.0, 1.0, 0.0), (1.0, 0.0, 0.0, 0.0))


def flattened_tiles(seed: int, bit_depth: int) -> list[tuple[float, np.ndarray]]:
    """(cell-area coverage, window) of the tiles of a small lot-style field whose zones are all
    flattened cells, at a lot's confluence (synth/lot.py; its tiles are full of large flat cells)."""
    rng = np.random.default_rng(seed)
    donor = build_donor(0, LOT_DONOR_BASE + seed)
    rendered = render_field(rng, donor, FIELD, "phase", bit_depth,
                            planner=lambda r, side, scale: lot_zones(r, side, FIELD, ALL_FLATTENED, 2.0 * TILE, scale))
    boxes = tile_boxes(FIELD, FIELD, TILE)
    truth = tile_truth(rendered.cells, boxes, rendered.box[0])
    return [(float(truth["coverage"][i]), rendered.image[y0:y1, x0:x1])
            for i, (_, _, y0, x0, y1, x1) in enumerate(boxes)]


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_tiles_of_flattened_cells_read_as_foreground(bit_depth: int) -> None:
    """Every tissue tile of twelve flattened fields is above the skip threshold. The block-intensity
    test alone read some at 0.02-0.04 (seed 3: three of its four tiles, coverage 0.44-0.63): the flat
    bodies sit at the tile's median and their spread hides the edges; the texture test sees them."""
    low = []
    for seed in range(12):
        for coverage, window in flattened_tiles(seed, bit_depth):
            if coverage >= MIN_COVERAGE:
                fg = foreground_fraction(window, bit_depth)
                if fg < MIN_FOREGROUND:
                    low.append((seed, round(coverage, 2), round(fg, 3)))
    assert not low, f"(seed, coverage, foreground) of flattened tissue tiles read as background: {low}"


@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("tile", [128, 256])
def test_empty_tiles_with_noise_and_illumination_gradients_read_as_background(bit_depth: int, tile: int) -> None:
    """Camera noise (shot and read noise, synth.optics.expose: 40-2500 photons at the background level)
    on the generator's illumination (synth.optics.illumination: a tilt up to 25 % and a vignette up to
    25 % over a 2048-px frame; the tile anywhere in it, corners included), plus a linear gradient of up
    to 30 % across the tile itself: an empty tile. The old measure compared blocks with the median
    level, so a gradient beyond 3 % of the level read as foreground (0.33-0.70 at the worst of each case here)."""
    rng = np.random.default_rng(tile + bit_depth)
    frame = 2048
    values = []
    for _ in range(12):
        y0, x0 = rng.integers(0, frame - tile + 1, 2)
        y, x = np.mgrid[y0:y0 + tile, x0:x0 + tile] / frame - 0.5
        theta, angle = rng.uniform(0, 2 * np.pi, 2)
        light = (1 + rng.uniform(0, 0.25) * (np.cos(theta) * x + np.sin(theta) * y)
                 - rng.uniform(0, 0.25) * (x ** 2 + y ** 2))
        u, v = (np.mgrid[0:tile, 0:tile] / tile) - 0.5
        gradient = 1 + rng.uniform(0, 0.3) * (np.cos(angle) * u + np.sin(angle) * v)
        values.append(foreground_fraction(expose(rng, light * gradient, bit_depth), bit_depth))
    assert max(values) < 0.01, np.round(values, 3)


def test_a_constant_or_tiny_window_is_background_and_a_bad_shape_an_error() -> None:
    assert foreground_fraction(np.full((128, 128), 1000, np.uint16), 16) == 0.0
    assert foreground_fraction(np.full((2, 2, 2), 7, np.uint8), 8) == 0.0  # no neighbours: the floors apply
    assert foreground_fraction(np.zeros((64, 64), np.float32), 32) == 0.0
    with pytest.raises(ValueError):
        foreground_fraction(np.zeros((4, 4, 1, 1)), 8)


def test_sparse_cells_still_read_by_their_area() -> None:
    """A few dark discs on an empty 16-bit background: the intensity test reads about their area."""
    rng = np.random.default_rng(0)
    signal = np.ones((128, 128))
    yy, xx = np.mgrid[0:128, 0:128]
    for cy, cx in [(30, 30), (90, 60), (50, 100)]:
        signal[(yy - cy) ** 2 + (xx - cx) ** 2 < 10 ** 2] = 0.6
    window = expose(rng, signal, 16)
    area = 3 * np.pi * 10 ** 2 / 128 ** 2
    assert 0.5 * area < foreground_fraction(window, 16) < 2.5 * area


@pytest.mark.parametrize("m", [1, 2, 3, 8, 31, 1984])
def test_the_measure_medians_are_numpys_on_ties_odd_and_even_counts_and_nan(m: int) -> None:
    """``_median`` reads both middle values from one partition; it must give np.median's numbers exactly,
    also where many values tie (block means of integer images) and where a float field has NaN."""
    rng = np.random.default_rng(m)
    for d in (rng.integers(0, 4, (5, m, 2)) / 3.0, rng.normal(size=(5, m, 2)).astype(np.float32)):
        assert np.array_equal(_median(d), np.median(d, axis=1))
    with_nan = rng.normal(size=(3, m, 1))
    with_nan[1, 0, 0] = np.nan
    assert np.array_equal(_median(with_nan), np.median(with_nan, axis=1), equal_nan=True)


def test_a_batch_of_windows_measures_each_as_alone() -> None:
    """foreground_fractions on n windows = foreground_fraction of each (qc measures 16 tiles at once)."""
    rng = np.random.default_rng(3)
    windows = rng.integers(900, 1100, (6, 64, 64, 1)).astype(np.uint16)
    windows[2, 10:40, 10:40] += 400
    windows[4] = 1000
    batched = foreground_fractions(windows, 16)
    assert batched.tolist() == [foreground_fraction(w, 16) for w in windows]
    assert batched[2] > 0.1 and batched[4] == 0.0


def test_tile_grid_covers_the_image_edge_aligned() -> None:
    boxes = tile_grid(300, 260, 128)
    assert {(b.y0, b.y1) for b in boxes} == {(0, 128), (128, 256), (172, 300)}
    assert {(b.x0, b.x1) for b in boxes} == {(0, 128), (128, 256), (132, 260)}
    assert [(b.row, b.col) for b in boxes][:4] == [(0, 0), (0, 1), (0, 2), (1, 0)]
