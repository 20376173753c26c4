#!/usr/bin/env python
"""Calibrate a trained run again from its checkpoint and split, then export it with the new settings.

    python scripts/calibrate.py RUN_DIR [decide.target_accuracy=0.95 decide.delta=0.05 ...]

For a run trained before calibration existed, or to change the certified target without training.
"""

import argparse
import sys

from mscvision.cli import guarded


def run(args: argparse.Namespace) -> int:
    from mscvision.export import export_run
    from mscvision.training.config import load_config
    from mscvision.training.recalibrate import recalibrate

    metrics = recalibrate(args.run, args.overrides)
    for task, block in metrics["calibration"].items():
        test = block["test"]
        abstain = metrics["abstention"][task]
        accuracy = abstain["test"]["selective_accuracy"]
        print(f"{task}: T={block['temperature']:.3f}; test ECE {test['before']['ece']:.4f} → {test['after']['ece']:.4f}, "
              f"NLL {test['before']['nll']:.3f} → {test['after']['nll']:.3f}; "
              f"{abstain['certificate']['reason']}; test coverage {abstain['test']['coverage']:.3f}, selective "
              f"accuracy {'—' if accuracy is None else f'{accuracy:.4f}'}, oracle coverage {abstain['oracle']['coverage']:.3f}")
    if not args.no_export:
        config = load_config([f"{args.run}/config.yaml"], args.overrides)
        export_run(args.run, precision=config.export.precision)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", metavar="RUN_DIR")
    parser.add_argument("--no-export", action="store_true", help="only rewrite calibration.json and metrics.json")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    sys.exit(guarded(run, parser.parse_args(), "scripts/calibrate.py"))
