#!/usr/bin/env python
"""k-fold stratified group cross-validation; prints pooled out-of-fold figures and writes crossval.json.

    python scripts/cross_validate.py --config configs/mitocheck.yaml [--folds 5] [--check-only] [key.sub=value ...]

Before any fold trains, every fold's split is checked (a class without training images in some
fold is refused, exit 2) and the per-fold split table is printed; ``--check-only`` stops there.
Each fold is calibrated on its calibration groups; with export.enabled (the default) each fold model
is exported and its evaluation report written to FOLD_DIR/evaluation/ (commands/deliver.py).
"""

import argparse
import sys

from mscvision.cli import guarded


def run(args: argparse.Namespace) -> int:
    from mscvision.training.config import load_config
    from mscvision.training.crossval import check_folds, cross_validate, print_checked_folds, print_report
    from mscvision.training.distributed import quiet_secondary

    quiet_secondary()  # on several devices every rank runs this script; rank 0 prints
    config = load_config(args.config, args.overrides)
    if args.check_only:
        print_checked_folds(check_folds(config, args.folds))
        return 0
    print_report(cross_validate(config, args.folds, after_fold=_deliver(config) if config.export.enabled else None))
    return 0


def _deliver(config):
    """Each fold model exported and judged on its own test wells, as a station would (commands/deliver.py)."""
    from mscvision.commands.deliver import export_and_report

    return lambda fold_dir: export_and_report(fold_dir, config.export.precision)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", metavar="FILE", help="YAML config(s), layered in order")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--check-only", action="store_true",
                        help="check the folds and print the split table; train nothing, write nothing")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    sys.exit(guarded(run, parser.parse_args(), "scripts/cross_validate.py"))
