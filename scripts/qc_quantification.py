"""Fit a QC spec's quantification file on a labelled calibration lot (never the lot it will judge).

    python scripts/qc_quantification.py --lot CAL_LOT --model MODEL.onnx --out quantification.json

The model's own quantification (``tasks[].quantification``) comes from its val crops; whole-field
tiles are another population (tiles cut across cells, partial cells, mixed states), so a station
corrects its counts with confusions measured on tiles like the ones it judges. CAL_LOT is what
``mscvision synth --lot`` writes (its ``truth_tiles.csv`` labels every tile by dominant state); each
field is scanned exactly as ``mscvision qc`` scans it, and for every usable tile (run, not flagged)
whose grid box matches a labelled tissue tile, its calibrated probabilities are added to the row of
its true class. Written: ``{"tasks": {TASK: {"mean_probability": KxK (rows: true class),
"n_per_class": K, "per_well": [...]}}}``, the shape ``core.quantify.load_quantification`` reads;
point the spec's ``quantification:`` at it.

``per_well`` (issue 17: the model's confusions differ from well to well, so a new well's are a draw,
not the pooled mean): one row ``{"well", "class" (the true class's index), "n", "mean_probability"}``
per calibration well and true class, the same sums split by well (the lot's ``layout.csv``; without
one each image is its own well). Only where the well has >= ``core.quantify.MIN_WELL_TILES`` (10)
tiles of the class: a mean over fewer tiles is mostly its own sampling noise, which the between-well
spread would take for variation between wells (the reader skips such rows too). The pooled keys are
as before, so older readers work.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from mscvision.core.fileio import write_json_atomic
from mscvision.core.quantify import MIN_WELL_TILES
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
    wells = well_of(args.lot)
    sums = {t: {} for t in tasks}    # task -> well -> K x K sums of probability rows by true class
    counts = {t: {} for t in tasks}  # task -> well -> K tile counts
    for image in sorted({k[0] for k in truth}):
        well = wells.get(image, image)
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
                sums[task].setdefault(well, np.zeros((len(classes), len(classes))))[k] += tile.probabilities[task]
                counts[task].setdefault(well, np.zeros(len(classes), dtype=np.int64))[k] += 1
        print(f"{image}: {sum(usable(t) for t in scan.tiles)} usable tiles", file=sys.stderr)
    doc = {"source": {"lot": str(args.lot), "model_sha256": model.sha256}, "tasks": {}}
    for task, classes in tasks.items():
        k = len(classes)
        n = sum(counts[task].values(), np.zeros(k, dtype=np.int64))
        mean = _means(sum(sums[task].values(), np.zeros((k, k))), n)
        per_well = []
        for well in sorted(counts[task]):
            well_mean = _means(sums[task][well], counts[task][well])
            per_well += [{"well": well, "class": c, "n": int(counts[task][well][c]),
                          "mean_probability": well_mean[c].round(6).tolist()}
                         for c in range(k) if counts[task][well][c] >= MIN_WELL_TILES]
        doc["tasks"][task] = {"classes": classes, "mean_probability": mean.round(6).tolist(),
                              "n_per_class": n.tolist(), "per_well": per_well}
        print(f"{task}: n per class {dict(zip(classes, n.tolist()))}; mean probability of the true class "
              f"{dict(zip(classes, np.diag(mean).round(3).tolist()))}")
        for c, name in enumerate(classes):
            own = [r["mean_probability"][c] for r in per_well if r["class"] == c]
            spread = f", own-class mean {min(own):.3f} to {max(own):.3f}" if own else ""
            print(f"  {name}: {len(own)} wells with >= {MIN_WELL_TILES} tiles{spread}")
    write_json_atomic(args.out, doc)
    print(f"wrote {args.out}")
    return 0


def well_of(lot: Path) -> dict[str, str]:
    """image path (as truth_tiles.csv writes it) -> its well, from the lot's layout.csv (the lot
    prefixed when it names several lots); {} without one (each image is then its own well)."""
    layout = lot / "layout.csv"
    if not layout.is_file():
        return {}
    with open(layout, newline="") as f:
        rows = list(csv.DictReader(f))
    several = len({r.get("lot") or "" for r in rows}) > 1
    return {r["path"]: f"{r['lot']}/{r['well']}" if several else r["well"] for r in rows}


def _means(sums: np.ndarray, n: np.ndarray) -> np.ndarray:
    return np.where(n[:, None] > 0, sums / np.maximum(n, 1)[:, None], 0.0)


if __name__ == "__main__":
    sys.exit(main())
