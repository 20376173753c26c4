"""`mscvision synth`: generate the synthetic MSC-culture data set, a preview montage, or a QC lot.

    mscvision synth --out data/synth --n 2400 [--seed 0] [--modality phase] [--bit-depth 8] [--workers 2]
    mscvision synth --out data/wells --n 4 --field-size 2048      # whole-well fields
    mscvision synth --preview docs/synth_preview.png [--seed 0]
    mscvision synth --lot --out data/lot [--wells 24] [--lots 1] [--field-size 2048] [--tile 128]
                    [--lot-plan PLAN.json] [--min-coverage 0.05] [--seed 0] [--workers 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mscvision.core.errors import ConfigError

# options that belong to one mode only: (dest, flag); their defaults are None so that use is visible
_DATASET_ONLY = (("n", "--n"), ("size", "--size"))
_LOT_ONLY = (("wells", "--wells"), ("lots", "--lots"), ("tile", "--tile"), ("lot_plan", "--lot-plan"),
             ("min_coverage", "--min-coverage"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="output folder (images/, manifest.csv, synth.json)")
    parser.add_argument("--n", type=int, default=None, help="number of images (fields with --field-size); 2400")
    parser.add_argument("--seed", type=int, default=0, help="everything is determined by it")
    parser.add_argument("--modality", choices=("phase", "fluorescence"), default="phase",
                        help="phase contrast (PNG) or 2-channel nuclei + cytoskeleton fluorescence (TIFF)")
    parser.add_argument("--bit-depth", type=int, choices=(8, 16), default=None, help="8 (a lot: 16)")
    parser.add_argument("--size", type=int, default=None, help="crop side in px; 128")
    parser.add_argument("--field-size", type=int, default=None,
                        help="render whole-well fields of this side (e.g. 2048) instead of crops (a lot: 2048)")
    parser.add_argument("--workers", type=int, default=1, help="processes; output is identical for any value")
    parser.add_argument("--preview", type=Path, help="write a labelled montage PNG here instead of a data set")
    lot = parser.add_argument_group("QC lot (--lot): wells with chosen state fractions and their truth")
    lot.add_argument("--lot", action="store_true",
                     help="write a lot of whole-well fields (tiled 16-bit TIFF), truth.csv, truth_tiles.csv, "
                          "layout.csv")
    lot.add_argument("--wells", type=int, default=None, help="wells in all (default 24; one field each)")
    lot.add_argument("--lots", type=int, default=None, help="lots the wells are dealt into, one donor each (1)")
    lot.add_argument("--tile", type=int, default=None, help="tile side in px the truth is counted in (128)")
    lot.add_argument("--lot-plan", type=Path, default=None,
                     help='JSON list of per-well targets, e.g. [{}, {"differentiation=osteogenic": 0.2}]')
    lot.add_argument("--min-coverage", type=float, default=None,
                     help="cell-area coverage from which a tile is tissue (0.05)")


def run(args: argparse.Namespace) -> int:
    if args.lot:
        return _run_lot(args)
    used = [flag for dest, flag in _LOT_ONLY if getattr(args, dest) is not None]
    if used:
        raise ConfigError(f"{', '.join(used)}: only with --lot (a QC lot); a data set takes --n")
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

    n = 2400 if args.n is None else args.n
    start = time.perf_counter()
    manifest = generate_dataset(args.out, n=n, seed=args.seed, modality=args.modality,
                                bit_depth=args.bit_depth or 8, size=args.size or 128, workers=args.workers,
                                field_size=args.field_size)
    seconds = time.perf_counter() - start
    print(f"wrote {n} images to {args.out} ({n / seconds:.1f} images/s); manifest: {manifest}")
    return 0


def _run_lot(args: argparse.Namespace) -> int:
    used = [flag for dest, flag in _DATASET_ONLY if getattr(args, dest) is not None]
    if used:
        raise ConfigError(f"{', '.join(used)}: not with --lot; a lot takes --wells and --field-size")
    if args.preview is not None:
        raise ConfigError("--preview and --lot: choose one (a montage, or a lot)")
    if args.modality != "phase":
        raise ConfigError(f"--modality {args.modality} with --lot: a lot is phase contrast only")
    if args.out is None:
        raise ConfigError("mscvision synth --lot needs --out DIR")
    from mscvision.synth.lot import MIN_COVERAGE, generate_lot, read_plan

    plan = read_plan(args.lot_plan) if args.lot_plan is not None else None
    start = time.perf_counter()
    layout = generate_lot(args.out, wells=args.wells, lots=args.lots or 1, field_size=args.field_size or 2048,
                          tile=args.tile or 128, seed=args.seed, workers=args.workers, plan=plan,
                          min_coverage=MIN_COVERAGE if args.min_coverage is None else args.min_coverage,
                          bit_depth=args.bit_depth or 16)
    seconds = time.perf_counter() - start
    wells = sum(1 for _ in open(layout, encoding="utf-8")) - 1
    print(f"wrote {wells} wells to {args.out} ({seconds / wells:.1f} s/well); layout: {layout}, truth: "
          f"{Path(args.out) / 'truth.csv'}, per tile: {Path(args.out) / 'truth_tiles.csv'}")
    return 0
