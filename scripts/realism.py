"""Realism benchmark for the synthetic MSC data set: can a model cheat?

    python scripts/realism.py --n 1200 --seed 0 --out realism.json
    python scripts/realism.py --data data/synth --cnn-metrics runs/x/metrics.json

Fits logistic regressions on (1) global intensity statistics and (2) LBP texture histograms,
evaluated on held-out donors (group k-fold), and checks the bars of the generator's issue:
intensity <= chance + 0.15 per task, LBP >= 0.15 below the CNN (when its metrics are given).
Generating with --n also measures images/s on one core (--speed: only that).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mscvision.core.imageio import decode_image
from mscvision.synth import DIFFERENTIATION_CLASSES, MORPHOLOGY_CLASSES, generate_dataset, read_manifest_rows
from mscvision.training.realism import evaluate, intensity_features, lbp_features

TASKS = {"morphology": MORPHOLOGY_CLASSES, "differentiation": DIFFERENTIATION_CLASSES}
INTENSITY_MARGIN = 0.15  # allowed above chance
LBP_GAP = 0.15  # required below the CNN


def load(data: Path):
    rows = read_manifest_rows(data / "manifest.csv")
    feats_i, feats_t = [], []
    for row in rows:
        decoded = decode_image(data / row["path"])
        feats_i.append(intensity_features(decoded.array, 255 if decoded.bit_depth == 8 else 65535))
        feats_t.append(lbp_features(decoded.array))
    labels = {t: np.array([classes.index(r[t]) for r in rows]) for t, classes in TASKS.items()}
    return np.array(feats_i), np.array(feats_t), labels, np.array([r["group"] for r in rows])


def cnn_score(metrics: dict, task: str) -> float | None:
    """Test balanced accuracy of ``task`` from a run's metrics.json (schema mscvision.metrics/1)."""
    return metrics.get("test", {}).get(task, {}).get("balanced_accuracy")


def benchmark(data: Path, cnn_metrics: dict | None) -> dict:
    feats_i, feats_t, labels, groups = load(data)
    report = {"data": str(data), "images": len(groups), "donors": len(set(groups)), "tasks": {}}
    for task, classes in TASKS.items():
        chance = 1.0 / len(classes)
        entry = {"chance": chance, "intensity": evaluate(feats_i, labels[task], groups),
                 "intensity_bar": chance + INTENSITY_MARGIN, "lbp": evaluate(feats_t, labels[task], groups)}
        entry["intensity_ok"] = entry["intensity"] <= entry["intensity_bar"]
        cnn = cnn_score(cnn_metrics, task) if cnn_metrics else None
        if cnn is not None:
            entry.update(cnn=cnn, lbp_gap=cnn - entry["lbp"], lbp_ok=cnn - entry["lbp"] >= LBP_GAP)
        report["tasks"][task] = entry
    return report


def print_table(report: dict) -> None:
    print(f"{report['images']} images, {report['donors']} donors, held-out donors (group k-fold)")
    print(f"{'task':16s} {'chance':>7s} {'intens.':>8s} {'bar':>6s} {'LBP':>6s} {'CNN':>6s} {'gap':>6s}")
    for task, e in report["tasks"].items():
        cnn = f"{e['cnn']:6.3f} {e['lbp_gap']:6.3f}" if "cnn" in e else f"{'-':>6s} {'-':>6s}"
        flag = "" if e["intensity_ok"] else "  intensity over bar!"
        print(f"{task:16s} {e['chance']:7.3f} {e['intensity']:8.3f} {e['intensity_bar']:6.3f} {e['lbp']:6.3f} {cnn}{flag}")
    if "images_per_s" in report:
        print(f"generation: {report['images_per_s']:.1f} images/s on one core")


def measure_speed(n: int, seed: int, modality: str, folder: str | None = None) -> float:
    """Images/s of ``generate_dataset`` with one worker (files written, as in real use)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        generate_dataset(folder or tmp, n=n, seed=seed, modality=modality, workers=1)
        return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="an existing synthetic data set (folder with manifest.csv)")
    parser.add_argument("--n", type=int, default=1200, help="images to generate when --data is not given")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modality", default="phase", choices=("phase", "fluorescence"))
    parser.add_argument("--cnn-metrics", type=Path, help="RUN/metrics.json of a trained CNN, for the LBP gap")
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    parser.add_argument("--speed", action="store_true", help="only time generating --n images on one core")
    args = parser.parse_args(argv)
    if args.speed:
        print(f"generation: {measure_speed(args.n, args.seed, args.modality):.1f} images/s on one core")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        data, speed = args.data, None
        if data is None:
            speed, data = measure_speed(args.n, args.seed, args.modality, tmp), Path(tmp)
        cnn = json.loads(args.cnn_metrics.read_text()) if args.cnn_metrics else None
        report = benchmark(data, cnn)
    if speed is not None:
        report["images_per_s"] = speed
    print_table(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
