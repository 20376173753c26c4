"""`mscvision synth`: generate the synthetic MSC-culture data set, or a preview montage.

    mscvision synth --out data/synth --n 2400 [--seed 0] [--modality phase] [--bit-depth 8] [--workers 2]
    mscvision synth --out data/wells --n 4 --field-size 2048      # whole-well fields
    mscvision synth --preview docs/synth_preview.png [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mscvision.core.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="output folder (images/, manifest.csv, synth.json)")
    parser.add_argument("--n", type=int, default=2400, help="number of images (fields with --field-size)")
    parser.add_argument("--seed", type=int, default=0, help="everything is determined by it")
    parser.add_argument("--modality", choices=("phase", "fluorescence"), default="phase",
                        help="phase contrast (PNG) or 2-channel nuclei + cytoskeleton fluorescence (TIFF)")
    parser.add_argument("--bit-depth", type=int, choices=(8, 16), default=8)
    parser.add_argument("--size", type=int, default=128, help="crop side in px")
    parser.add_argument("--field-size", type=int, default=None,
                        help="render whole-well fields of this side (e.g. 2048) instead of crops")
    parser.add_argument("--workers", type=int, default=1, help="processes; output is identical for any value")
    parser.add_argument("--preview", type=Path, help="write a labelled montage PNG here instead of a data set")


def run(args: argparse.Namespace) -> int:
    if args.preview is not None:
        from mscvision.synth.preview import write_preview

        if args.preview.suffix.lower() != ".png":
            raise ConfigError(f"--preview {args.preview}: the montage is a PNG; name it *.png")
        write_preview(args.preview, seed=args.seed, modality=args.modality)
        print(f"wrote {args.preview}")
        return 0
    if args.out is None:
        raise ConfigError("mscvision synth needs --out DIR (a data set) or --preview FILE.png (a montage)")
    from mscvision.synth.dataset import generate_dataset

    start = time.perf_counter()
    manifest = generate_dataset(args.out, n=args.n, seed=args.seed, modality=args.modality,
                                bit_depth=args.bit_depth, size=args.size, workers=args.workers,
                                field_size=args.field_size)
    seconds = time.perf_counter() - start
    print(f"wrote {args.n} images to {args.out} ({args.n / seconds:.1f} images/s); manifest: {manifest}")
    return 0
