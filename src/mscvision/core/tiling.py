"""Tile geometry of a whole field, and the cheap foreground measure that skips empty tiles.

A field (2k-10k px a side) is cut into square tiles the size of the model's input at the model's
pixel size (runtime/tiles.py computes that side); each tile is then preprocessed exactly as a
training crop. ``tile_grid`` covers the whole image: tiles step by ``tile - overlap`` and the last
row / column is moved back to end at the image's edge (it overlaps its neighbour more, rather than
being padded or dropped, so every pixel is seen and no tile holds invented pixels).

``foreground_fraction`` decides whether a tile holds enough tissue to be worth the model: see its
docstring for the measure and why it is this one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# The foreground measure (foreground_fraction). Calibrated on synthetic 8- and 16-bit phase lots
# (mscvision synth --lot, dense and sparse, against their per-tile truth) and on blank tiles (camera
# noise, illumination tilt and vignette, a steep linear gradient): a blank window gives < 0.01; tissue
# tiles of every state read above 0.05 but for the faintest flattened ones of noisy 8-bit fields
# (tests/core/test_tiling.py holds both cases).
FOREGROUND_BLOCKS = 32  # the window is averaged down to about this many blocks a side
FOREGROUND_Z = 5.0  # intensity: a block beyond this many noise sigmas from the background plane
FOREGROUND_CONTRAST = 0.03  # ... and beyond this fraction of the background level (integer images)
TEXTURE_Z = 3.0  # texture: a block's Laplacian beyond this many sigmas of the block-averaged pixel noise
TEXTURE_CONTRAST = 0.05  # ... and beyond this fraction of the background level (integer images)
# E|Z| over the smaller half of |Z|, Z standard normal: 2 (phi(0) - phi(z_0.75)) / 0.5 = 0.3247
_LOW_HALF_MEAN = 2.0 * (1.0 - math.exp(-0.5 * 0.6744897501960817 ** 2)) / math.sqrt(2.0 * math.pi) / 0.5


@dataclass(frozen=True, slots=True)  # slots: a 10k field has ~6,000 of them
class TileBox:
    """One tile: its grid position and its source-pixel box (end exclusive)."""

    row: int
    col: int
    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0


def tile_starts(length: int, tile: int, overlap: int = 0) -> list[int]:
    """Starts of the tiles along one axis: every ``tile - overlap`` px, the last one moved back so
    that it ends at ``length`` (it may then overlap its neighbour by more than ``overlap``)."""
    _check_geometry(length, tile, overlap)
    stride = tile - overlap
    n = max(1, math.ceil((length - tile) / stride) + 1)
    starts = [min(i * stride, length - tile) for i in range(n)]
    return list(dict.fromkeys(starts))  # a last tile moved back onto the one before is the same tile


def tile_grid(height: int, width: int, tile: int, overlap: int = 0) -> list[TileBox]:
    """Square ``tile``-px tiles covering a ``height`` x ``width`` image, row by row.

    ``ValueError`` when the image is smaller than one tile (a caller tiles only what it can cover;
    runtime/tiles.py turns that into an error naming the fix) or the overlap is not below the tile.
    """
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    return [TileBox(r, c, y, x, y + tile, x + tile) for r, y in enumerate(ys) for c, x in enumerate(xs)]


def _check_geometry(length: int, tile: int, overlap: int) -> None:
    if tile < 1:
        raise ValueError(f"tile side {tile} px must be at least 1")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap {overlap} px must be from 0 to less than the tile side ({tile} px)")
    if length < tile:
        raise ValueError(f"{length} px is shorter than one {tile}-px tile")


def block_of(box: TileBox, block_tiles: int) -> tuple[int, int]:
    """The spatial cluster of a tile: ``block_tiles`` x ``block_tiles`` neighbouring tiles share one
    (tiles of one block are not independent evidence; the intervals count clusters, not tiles)."""
    if block_tiles < 1:
        raise ValueError(f"block_tiles={block_tiles} must be at least 1")
    return box.row // block_tiles, box.col // block_tiles


def foreground_fraction(window: np.ndarray, bit_depth: int) -> float:
    """The fraction of a raw (h, w, C) window that differs from its background: 0 for an empty field.

    The window is averaged down to blocks (about ``FOREGROUND_BLOCKS`` a side). A block is foreground
    when, in any channel, either test holds:

    - **intensity**: its mean is beyond ``FOREGROUND_Z`` sigmas *and* (integer images) beyond
      ``FOREGROUND_CONTRAST`` of the background level from the background *plane*. The plane's slopes
      are medians of differences between blocks half the window apart (a tilt, or the local slope of
      a vignette; cells touch a minority of the pairs), its level the median block after the tilt is
      taken off, so an illumination gradient across an empty tile is not tissue. Sigma is the robust
      spread (MAD) of the differences between neighbouring blocks, which sees camera noise and fine
      background mottle at the block scale but not the smooth illumination. Sparse cells (dark bodies,
      bright halos, stained areas) pass this test.
    - **texture**: its Laplacian (the block minus the mean of its four neighbours: zero on a level, a
      tilt, and nearly so on a vignette) is beyond ``TEXTURE_Z`` sigmas of what the camera's pixel
      noise leaves in it *and* (integer images) beyond ``TEXTURE_CONTRAST`` of the background level.
      The pixel noise sigma is a robust spread of the differences between neighbouring *pixels*
      (``_pixel_sigma``): cell edges are a minority of them, so it is the camera's noise even in a
      tile full of cells. This is the test that sees a tile covered by flattened (senescent) cells:
      large, flat and pale, their bodies sit at the tile's median and spread the block differences,
      so the intensity test reads such a tile as background (issue 17: the skipped tiles were then
      not a random sample of the well); their crisp outlines, halos and nuclei are a Laplacian far
      above the pixel noise. The contrast floor keeps fine background mottle (a few % of the level)
      out.

    Why this measure: it works on the raw values (percentile scaling would stretch an empty tile's
    noise to full contrast), needs no training and no field-wide statistics (a few vectorised passes
    per tile while streaming), and both noise estimates come from the window itself, so it holds for
    any camera, gain and bit depth. ``bit_depth`` (8, 16, or 32 for float) sets the quantisation floor
    of the noise: a constant 16-bit window has zero spread, and one grey level of a step is not tissue.
    Debris, dust and scratches are structure too and may read as foreground; the model's OOD gate is
    what judges them.
    """
    x = np.asarray(window)
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"window of shape {x.shape}: expected (h, w, C)")
    return float(foreground_fractions(x[None], bit_depth)[0])


def foreground_fractions(windows: np.ndarray, bit_depth: int) -> np.ndarray:
    """``foreground_fraction`` of each of n equal-sized windows, (n, h, w, C) → (n,): the one
    implementation (a single window is a batch of one). Every statistic is taken per window along
    its own axes, so a window's result does not depend on the others; batched because a whole field
    has thousands of tiles and the measure's many small medians cost more in per-call overhead than
    in arithmetic (issue 17: qc's throughput against the bare session)."""
    x = np.asarray(windows)
    if x.ndim != 4 or min(x.shape[1:3]) < 1:
        raise ValueError(f"windows of shape {x.shape}: expected (n, h, w, C)")
    x = x.astype(np.float32, copy=False)
    blocks, side = _block_means(x)
    n, gh, gw, c = blocks.shape
    level = _median(blocks.reshape(n, -1, c))
    floor = _quantisation_floor(bit_depth, level)
    integer = bit_depth in (8, 16)
    dy, dx = np.diff(blocks, axis=1), np.diff(blocks, axis=2)
    # intensity, against the background plane
    tilt_y, tilt_x = _tilt(blocks, 1), _tilt(blocks, 2)
    rows, cols = np.arange(gh)[None, :, None, None], np.arange(gw)[None, None, :, None]
    flat = blocks - tilt_y[:, None, None, :] * rows - tilt_x[:, None, None, :] * cols
    sigma = np.maximum(_difference_sigma(dy, dx), floor)
    margin = FOREGROUND_Z * sigma
    if integer:
        margin = np.maximum(margin, FOREGROUND_CONTRAST * np.abs(level))
    centre = _median(flat.reshape(n, -1, c))
    foreground = (np.abs(flat - centre[:, None, None, :]) > margin[:, None, None, :]).any(axis=3)
    # texture, against the pixel noise
    if gh >= 3 and gw >= 3:
        laplacian = blocks[:, 1:-1, 1:-1] - 0.25 * (blocks[:, :-2, 1:-1] + blocks[:, 2:, 1:-1]
                                                    + blocks[:, 1:-1, :-2] + blocks[:, 1:-1, 2:])
        # a b x b mean of white noise has sigma s / b; the Laplacian adds 4 neighbours at 1/4: x sqrt(1.25)
        margin = TEXTURE_Z * np.maximum(_pixel_sigma(x) * math.sqrt(1.25) / side, floor)
        if integer:
            margin = np.maximum(margin, TEXTURE_CONTRAST * np.abs(level))
        foreground[:, 1:-1, 1:-1] |= (np.abs(laplacian) > margin[:, None, None, :]).any(axis=3)
    return foreground.mean(axis=(1, 2))


def _block_means(x: np.ndarray) -> tuple[np.ndarray, int]:
    """(n, h, w, C) → ((n, h // b, w // b, C) means of b x b blocks, b), b so that about
    FOREGROUND_BLOCKS remain along the shorter side (b = 1 for a window that small); a ragged edge
    strip is dropped. Summed in float64 down the rows of each block, then across: the same means as one
    mean over both block axes (exact for integer images), at a third of its cost on a row of tiles."""
    n, h, w, c = x.shape
    b = max(1, min(h, w) // FOREGROUND_BLOCKS)
    gh, gw = h // b, w // b
    rows = x[:, :gh * b, :gw * b].reshape(n, gh, b, gw * b * c).sum(axis=2, dtype=np.float64)
    return rows.reshape(n, gh, gw, b, c).sum(axis=3) / (b * b), b


def _difference_sigma(dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Per window and channel, (n, C): the noise sigma of one block (or pixel) from the differences to
    its neighbours below (``dy``) and to the right (``dx``), each (n, ..., C): the MAD of the
    differences, each direction about its own median (a tilt), / (0.6745 * sqrt 2). Edges of cells
    are a minority of the differences, so the median ignores them; a window with no neighbours gets
    0 (the floor then applies)."""
    n, c = dy.shape[0], dy.shape[-1]
    parts = [d.reshape(n, -1, c) for d in (dy, dx) if d.size]
    if not parts:
        return np.zeros((n, c))
    d = np.concatenate([p - _median(p)[:, None, :] for p in parts], axis=1)
    return _median(np.abs(d)) / (0.6745 * math.sqrt(2.0))


def _tilt(blocks: np.ndarray, axis: int) -> np.ndarray:
    """Per window and channel, (n, C): the background's slope per block along ``axis`` (1 or 2 of
    (n, gh, gw, C)): the median of the differences between blocks half the window apart, over that
    distance. The long baseline keeps the slope off whole grey levels (1-px blocks of an integer
    gradient step by 0 or 1 between neighbours); cells touch a minority of the pairs, so the median
    ignores them. 0 for a window one block deep."""
    n, size, c = blocks.shape[0], blocks.shape[axis], blocks.shape[3]
    half = size // 2
    if half < 1:
        return np.zeros((n, c))
    d = np.take(blocks, range(half, size), axis) - np.take(blocks, range(size - half), axis)
    return _median(d.reshape(n, -1, c)) / half


def _median(d: np.ndarray) -> np.ndarray:
    """Per window and channel, the median of an (n, m, C) array over m: (n, C); 0 where m == 0.

    np.median's numbers (the middle value, or the mean of the two middle ones) from one partition:
    np.median's own wrappers cost more than its arithmetic on these small arrays, several times per
    tile. NaN (a float field's missing pixels) goes to np.median itself, which propagates it."""
    n, m, c = d.shape
    if not m:
        return np.zeros((n, c))
    if d.dtype.kind == "f" and np.isnan(d).any():
        return np.median(d, axis=1)
    half = m // 2
    part = np.partition(d, half, axis=1)
    if m % 2:
        return part[:, half]
    # the lower middle value is the largest of those partitioned below the upper one: one kth, not
    # two (numpy's two-kth partition cost 6x one on these block differences, measured)
    return (part[:, :half].max(axis=1) + part[:, half]) / 2


def _pixel_sigma(x: np.ndarray) -> np.ndarray:
    """Per window and channel, (n, C): the camera's pixel noise sigma from the differences between
    neighbouring pixels of (n, h, w, C) windows: horizontal ones on every other row, vertical ones on
    every other column (a quarter of the pairs is plenty, and keeps this the cheap pass it must be on
    every tile of a field; both directions, so that banding along rows or columns counts as noise).
    The estimate is the mean of the smaller half of |differences| / (``_LOW_HALF_MEAN`` * sqrt 2): for
    Gaussian noise that mean is 0.3247 sigma of a difference, and a difference has sigma sqrt 2 times
    the pixel's. As robust as the median (cell edges, up to half of the pairs, are in the larger half)
    but not stuck on whole grey levels where the noise is a grey level or two. At the pixel scale a
    tilt is far below the noise, so the differences are not centred."""
    n, c = x.shape[0], x.shape[3]
    out = np.zeros((n, c))
    for k in range(c):
        d = np.concatenate([np.diff(x[:, ::2, :, k], axis=2).reshape(n, -1),
                            np.diff(x[:, :, ::2, k], axis=1).reshape(n, -1)], axis=1)
        half = d.shape[1] // 2
        if half:
            np.abs(d, out=d)
            out[:, k] = np.partition(d, half, axis=1)[:, :half].mean(axis=1, dtype=np.float64)
    return out / (_LOW_HALF_MEAN * math.sqrt(2.0))


def _quantisation_floor(bit_depth: int, level: np.ndarray) -> np.ndarray:
    """The smallest noise sigma believed: one grey level for integer images (a constant window has a
    measured spread of 0, and a single level's step is quantisation, not tissue); for float images one
    part in 65536 of the level (16 bits of the image's own scale, as preprocess.flat_channels uses)."""
    if bit_depth in (8, 16):
        return np.ones_like(level)
    return np.maximum(np.abs(level), 1.0) / 65536.0
