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

# The foreground measure (foreground_fraction). Calibrated on synthetic 16-bit phase fields and on
# blank fields (camera noise, illumination tilt and vignette, background mottle): a blank window gives
# < 0.01, a tissue tile of the synthetic fields > 0.2 (tests/core/test_tiling.py holds both cases).
FOREGROUND_BLOCKS = 32  # the window is averaged down to about this many blocks a side
FOREGROUND_Z = 5.0  # a block is foreground beyond this many noise sigmas from the background level
FOREGROUND_CONTRAST = 0.03  # ... and beyond this fraction of the background level (integer images)


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

    The window is averaged down to blocks (about ``FOREGROUND_BLOCKS`` a side, which also averages
    the camera's pixel noise away); per channel the background level is the median block and the
    noise sigma is the robust spread (MAD) of differences between neighbouring blocks, which sees
    noise and fine background mottle at the block scale but not the smooth illumination. A block is
    foreground when it is beyond ``FOREGROUND_Z`` sigmas *and* (for integer images) beyond
    ``FOREGROUND_CONTRAST`` of the background level from it, in any channel. Cells in phase contrast
    or fluorescence differ from the background by far more than either (dark bodies, bright halos,
    stained areas), so a sparse tile reads about its cell area; a tile full of cells reads their
    bodies and edges (its median sits on tissue), still far above an empty tile.

    Why this measure: it works on the raw values (percentile scaling would stretch an empty tile's
    noise to full contrast), needs no training and no field-wide statistics (one pass per tile while
    streaming), and its noise estimate comes from the window itself, so it holds for any camera,
    gain and bit depth. ``bit_depth`` (8, 16, or 32 for float) sets the quantisation floor of the
    noise: a constant 16-bit window has zero spread, and one grey level of a step is not tissue.
    """
    x = np.asarray(window)
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"window of shape {x.shape}: expected (h, w, C)")
    blocks = _block_means(x.astype(np.float32, copy=False))
    level = np.median(blocks.reshape(-1, blocks.shape[2]), axis=0)
    sigma = np.maximum(_difference_sigma(blocks), _quantisation_floor(bit_depth, level))
    margin = FOREGROUND_Z * sigma
    if bit_depth in (8, 16):
        margin = np.maximum(margin, FOREGROUND_CONTRAST * np.abs(level))
    foreground = (np.abs(blocks - level) > margin).any(axis=2)
    return float(foreground.mean())


def _block_means(x: np.ndarray) -> np.ndarray:
    """(h, w, C) → (h // b, w // b, C) means of b x b blocks, b so that about FOREGROUND_BLOCKS remain
    along the shorter side (b = 1 for a window that small); a ragged edge strip is dropped."""
    h, w, c = x.shape
    b = max(1, min(h, w) // FOREGROUND_BLOCKS)
    gh, gw = h // b, w // b
    return x[:gh * b, :gw * b].reshape(gh, b, gw, b, c).mean(axis=(1, 3), dtype=np.float64)


def _difference_sigma(blocks: np.ndarray) -> np.ndarray:
    """Per channel, the noise sigma of one block from its neighbours: MAD of the differences between
    adjacent blocks / (0.6745 * sqrt 2). Edges of cells are a minority of the differences, so the
    median ignores them; a 1-block window has no neighbour and gets 0 (the floor then applies)."""
    diffs = [np.diff(blocks, axis=a).reshape(-1, blocks.shape[2]) for a in (0, 1) if blocks.shape[a] > 1]
    if not diffs:
        return np.zeros(blocks.shape[2])
    d = np.concatenate(diffs)
    mad = np.median(np.abs(d - np.median(d, axis=0)), axis=0)
    return mad / (0.6745 * math.sqrt(2.0))


def _quantisation_floor(bit_depth: int, level: np.ndarray) -> np.ndarray:
    """The smallest noise sigma believed: one grey level for integer images (a constant window has a
    measured spread of 0, and a single level's step is quantisation, not tissue); for float images one
    part in 65536 of the level (16 bits of the image's own scale, as preprocess.flat_channels uses)."""
    if bit_depth in (8, 16):
        return np.ones_like(level)
    return np.maximum(np.abs(level), 1.0) / 65536.0
