#!/usr/bin/env python
"""Check the abstention guarantee on a cross-validation's out-of-fold predictions (core/guarantee_check.py).

    python scripts/guarantee_check.py CV_DIR [--task TASK] [--draws 200] [--target 0.99] [--delta 0.05]

Reads every fold's predictions_test.csv (the deployed pass: each image scored by the fold model that
never trained on it) and prints / writes CV_DIR/guarantee_check.json.
"""

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from mscvision.core.fileio import write_json_atomic
from mscvision.core.guarantee_check import redraw_guarantee


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cv_dir", type=Path)
    parser.add_argument("--task", default=None, help="default: the first task")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--target", type=float, action="append", help="repeatable (default 0.99)")
    parser.add_argument("--delta", type=float, default=0.05)
    args = parser.parse_args()
    rows = [r for f in sorted(args.cv_dir.glob("fold*/predictions_test.csv"))
            for r in csv.DictReader(open(f, newline="", encoding="utf-8"))]
    if not rows:
        print(f"error: no fold*/predictions_test.csv under {args.cv_dir}", file=sys.stderr)
        return 2
    task = args.task or next(c for c in rows[0] if c.endswith(".true"))[:-len(".true")]
    classes = [c[len(task) + 3:] for c in rows[0] if c.startswith(f"{task}.p.")]
    known = [r for r in rows if r[f"{task}.true"] in classes]
    probs = np.array([[float(r[f"{task}.p.{c}"]) for c in classes] for r in known])
    labels = np.array([classes.index(r[f"{task}.true"]) for r in known])
    groups = np.array([r["group"] for r in known])
    report = {"task": task, "source": str(args.cv_dir), "checks": [
        redraw_guarantee(probs, labels, groups, target, args.delta, args.draws, by_group=by_group)
        for by_group in (True, False) for target in args.target or [0.99]]}
    for check in report["checks"]:
        print(json.dumps(check))
    write_json_atomic(args.cv_dir / "guarantee_check.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
