"""The QC check's cost: ``qc``'s tile scan of a whole field vs the bare session on the same tiles.

Both sides run in this process, alternating, on one model and one thread budget:
- ``qc``: ``runtime.tiles.scan_field`` on a tiled, compressed 16-bit TIFF (streaming decode, background
  test, preprocessing, the OOD gate's image checks, the graph, rows);
- the bare session: the same tiles' model inputs, pre-cut and prepared in memory beforehand, through
  ``Model.predict_with_ood`` in batches of the same size (the graph alone).
The ratio is the median over 6 alternating rounds of each round's qc tiles/s over the bare session's
in the same round (target >= 0.8): each round pairs passes made seconds apart, so a slow spell on a
shared machine moves both sides of a pair and cancels, where the ratio of the two sides' medians
(also recorded) pairs passes from different rounds.
Peak RSS is measured in a fresh subprocess per field size (5k and 10k a side), so one size's peak
does not hide the other's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mscvision.core.fieldio import open_field
from mscvision.core.imageio import DecodedImage
from mscvision.core.tiling import foreground_fraction, tile_grid
from mscvision.runtime.inputs import prepare_decoded
from mscvision.runtime.model import load_model
from mscvision.runtime.tiles import scan_field, tile_side

BATCH = 32
_RSS_CHILD = """
import json, resource, sys, time
from mscvision.runtime.model import load_model
from mscvision.runtime.tiles import scan_field
model = load_model(sys.argv[1], threads=int(sys.argv[3]), device="cpu")
start = time.perf_counter()
scan = scan_field(model, sys.argv[2])
seconds = time.perf_counter() - start
print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "tiles": len(scan.tiles), "seconds": seconds, "error": scan.error}))
"""


def prepared_tiles(model, path: Path, min_foreground: float = 0.05) -> list[np.ndarray]:
    """The model inputs of the field's non-background tiles, cut and prepared in memory (not timed)."""
    tensors = []
    with open_field(path) as field:
        tile = tile_side(model.metadata, field.pixel_size_um)  # the tiles qc cuts, not the input side
        band, band_rows = None, None
        for box in tile_grid(field.height, field.width, tile):  # row-major: one band read per tile row
            if band_rows != (box.y0, box.y1):
                band, band_rows = field.read_band(box.y0, box.y1), (box.y0, box.y1)
            window = band[:, box.x0:box.x1]
            if foreground_fraction(window, field.bit_depth) < min_foreground:
                continue
            decoded = DecodedImage(np.ascontiguousarray(window), field.bit_depth, field.pixel_size_um, ())
            tensors.append(prepare_decoded(decoded, model.metadata, str(path)).tensor)
    return tensors


def session_pass(model, tensors: list[np.ndarray]) -> float:
    start = time.perf_counter()
    for i in range(0, len(tensors), BATCH):
        model.predict_with_ood(np.stack(tensors[i:i + BATCH]))
    return time.perf_counter() - start


def qc_pass(model, path: Path) -> tuple[float, int]:
    start = time.perf_counter()
    scan = scan_field(model, path, batch_size=BATCH)
    return time.perf_counter() - start, sum(t.status != "background" for t in scan.tiles)


def qc_vs_session(model_path: Path, field: Path, threads: int, rounds: int = 6) -> dict:
    model = load_model(model_path, threads=threads, device="cpu")
    tensors = prepared_tiles(model, field)
    qc_rates, session_rates = [], []
    for _ in range(rounds):  # alternating, so drift on a shared machine hits both sides alike
        seconds, evaluated = qc_pass(model, field)
        qc_rates.append(evaluated / seconds)
        session_rates.append(len(tensors) / session_pass(model, tensors))
    qc_rate, session_rate = float(np.median(qc_rates)), float(np.median(session_rates))
    # each round's own ratio: on a 2-core shared machine one round's varies by several hundredths
    round_ratios = [q / s for q, s in zip(qc_rates, session_rates)]
    return {"field": str(field), "evaluated_tiles": len(tensors), "rounds": rounds,
            "qc_tiles_s": round(qc_rate, 1), "session_tiles_s": round(session_rate, 1),
            "ratio": round(float(np.median(round_ratios)), 3), "ratio_of_medians": round(qc_rate / session_rate, 3),
            "target": 0.8, "round_ratios": [round(r, 3) for r in round_ratios]}


def peak_rss(model_path: Path, field: Path, threads: int) -> dict:
    """Peak resident memory of a fresh process that loads the model and scans the field once."""
    done = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(model_path), str(field), str(threads)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def qc_benchmark(model_path: Path, fields: dict[str, Path], threads: int) -> dict:
    """``fields``: {"5k": path, "10k": path}: the ratio on the largest, peak RSS on each."""
    largest = fields[max(fields, key=lambda k: int(k.rstrip("k")))]
    figures = {"throughput": qc_vs_session(model_path, largest, threads)}
    figures["peak_rss"] = {name: peak_rss(model_path, path, threads) for name, path in fields.items()}
    rss = [v["peak_rss_mib"] for v in figures["peak_rss"].values()]
    figures["peak_rss_max_mib"] = round(max(rss), 1)
    figures["peak_rss_growth"] = round(max(rss) / min(rss), 3)
    return figures
