"""Fit a QC spec's quantification file on a labelled calibration lot (never the lot it will judge).

    python scripts/qc_quantification.py --lot CAL_LOT --model MODEL.onnx --out quantification.json

The model's own quantification (``tasks[].quantification``) comes from its val crops; whole-field
tiles are another population (tiles cut across cells, partial cells, mixed states), so a station
corrects its counts with confusions measured on tiles like the ones it judges. CAL_LOT is what
``mscvision synth --lot`` writes (its ``truth_tiles.csv`` labels every tile by dominant state); each
field is scanned exactly as ``mscvision qc`` scans it, and for every usable tile (run, not flagged)
whose grid box matches a labelled tissue tile, its calibrated probabilities are added to the row of
its true class. Written: ``{"tasks": {TASK: {"mean_probability": KxK (rows: true class),
"n_per_class": K}}}``, the shape ``core.quantify.load_quantification`` reads; point the spec's
``quantification:`` at it.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from mscvision.core.fileio import write_json_atomic
from mscvision.runtime.model import load_model
from mscvision.runtime.qc import usable
from mscvision.runtime.tiles import scan_field


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lot", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--min-foreground", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    model = load_model(args.model, threads=args.threads)
    tasks = {t.name: list(t.classes) for t in model.metadata.tasks}
    truth: dict[tuple[str, int, int], dict] = {}
    with open(args.lot / "truth_tiles.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["tissue"] == "1":
                truth[(row["path"], int(row["row"]), int(row["col"]))] = row
    sums = {t: np.zeros((len(c), len(c))) for t, c in tasks.items()}
    counts = {t: np.zeros(len(c), dtype=np.int64) for t, c in tasks.items()}
    for image in sorted({k[0] for k in truth}):
        scan = scan_field(model, str(args.lot / image), min_foreground=args.min_foreground)
        if scan.error:
            print(f"{image}: skipped: {scan.error}", file=sys.stderr)
            continue
        for tile in scan.tiles:
            label = truth.get((image, tile.box.row, tile.box.col))
            if label is None or not usable(tile):
                continue
            for task, classes in tasks.items():
                k = classes.index(label[task])
                sums[task][k] += tile.probabilities[task]
                counts[task][k] += 1
        print(f"{image}: {sum(usable(t) for t in scan.tiles)} usable tiles", file=sys.stderr)
    doc = {"source": {"lot": str(args.lot), "model_sha256": model.sha256}, "tasks": {}}
    for task, classes in tasks.items():
        n = counts[task]
        mean = np.where(n[:, None] > 0, sums[task] / np.maximum(n, 1)[:, None], 0.0)
        doc["tasks"][task] = {"classes": classes, "mean_probability": mean.round(6).tolist(),
                              "n_per_class": n.tolist()}
        print(f"{task}: n per class {dict(zip(classes, n.tolist()))}; mean probability of the true class "
              f"{dict(zip(classes, np.diag(mean).round(3).tolist()))}")
    write_json_atomic(args.out, doc)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
