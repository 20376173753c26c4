#!/usr/bin/env python
"""Write big whole-field TIFFs for the qc benchmark: W x W, 16-bit, tiled, zlib, with a pixel size.

    python scripts/make_big_field.py --out data/bench [--sizes 5000 10000] [--field-size 2048] [--seed 0]

One lot-style field (``synth/lot.py``: a patchy well, a few % flattened and osteogenic) is rendered
once and mirrored out to each size (``np.pad`` symmetric: no seams, no new cells), so a 10k x 10k
file takes seconds, not the minutes 25 rendered fields would. The tiles repeat, which a throughput
and memory benchmark does not mind; a fraction measured on it means nothing. Writes
``field_<W>.tif`` per size.
"""

import argparse
import time
from pathlib import Path

import numpy as np

from mscvision.core.imageio import write_tiled_tiff
from mscvision.synth.dataset import PIXEL_SIZE_UM
from mscvision.synth.labels import build_donor
from mscvision.synth.lot import LOT_DONOR_BASE, lot_zones, parse_plan
from mscvision.synth.render import render_field

TARGET = {"morphology=flattened": 0.05, "differentiation=osteogenic": 0.05}


def render_source(field_size: int, seed: int, tile: int = 128) -> np.ndarray:
    """One 16-bit phase field of ``field_size`` px on an unseen donor."""
    target = parse_plan([TARGET])[0]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xB16F]))
    result = render_field(rng, build_donor(seed, LOT_DONOR_BASE), field_size, "phase", 16,
                          planner=lambda r, side, scale: lot_zones(r, side, field_size, target, 2.0 * tile, scale))
    return result.image[:, :, 0] if result.image.ndim == 3 else result.image


def mirrored(source: np.ndarray, side: int) -> np.ndarray:
    """``source`` reflected out (or cropped) to ``side`` x ``side``."""
    h, w = source.shape
    return np.pad(source, ((0, max(0, side - h)), (0, max(0, side - w))), mode="symmetric")[:side, :side]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for field_<W>.tif")
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000], help="sides W in px")
    parser.add_argument("--field-size", type=int, default=2048, help="side of the one rendered field")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiff-tile", type=int, default=256, help="TIFF tile side (a multiple of 16)")
    args = parser.parse_args()
    if any(s < 1 for s in args.sizes) or not 256 <= args.field_size <= 8192:
        parser.error("--sizes must be positive and --field-size 256..8192")
    start = time.perf_counter()
    source = render_source(args.field_size, args.seed)
    print(f"rendered a {args.field_size} px field in {time.perf_counter() - start:.1f} s")
    for side in args.sizes:
        start = time.perf_counter()
        path = args.out / f"field_{side}.tif"
        write_tiled_tiff(path, mirrored(source, side), PIXEL_SIZE_UM, tile=args.tiff_tile)
        print(f"wrote {path}: {side}x{side} uint16, {path.stat().st_size / 2**20:.0f} MiB "
              f"({time.perf_counter() - start:.1f} s), {PIXEL_SIZE_UM} um/px")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
