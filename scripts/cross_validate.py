#!/usr/bin/env python
"""k-fold stratified group cross-validation; prints pooled out-of-fold figures and writes crossval.json.

    python scripts/cross_validate.py --config configs/mitocheck.yaml [--folds 5] [key.sub=value ...]
"""

import argparse
import sys

from mscvision.cli import guarded


def run(args: argparse.Namespace) -> int:
    from mscvision.training.config import load_config
    from mscvision.training.crossval import cross_validate, print_report

    print_report(cross_validate(load_config(args.config, args.overrides), args.folds))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", metavar="FILE", help="YAML config(s), layered in order")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    sys.exit(guarded(run, parser.parse_args(), "scripts/cross_validate.py"))
