#!/usr/bin/env python
"""Time to accuracy of a training recipe: test balanced accuracy against wall-clock minutes (issue 19).

    python scripts/time_to_accuracy.py --out DIR [--baseline OLD/curve.json] [--config FILE ...] [KEY=VALUE ...]
    python scripts/time_to_accuracy.py --out DIR --redraw [--baseline OLD/curve.json]   # the chart again

Runs what `python scripts/train.py` runs (train, calibrate, evaluate, export and the station's report
of the file), with one addition: after every training epoch the evaluated weights (the EMA when kept)
are copied aside with the minutes elapsed since the command started. The copy's own cost is taken off
the clock, so the minutes are those of the plain command. When the run is done every copy is scored on
the run's held-out test donors (plain pass, argmax, uncalibrated: a temperature does not move an
argmax), and DIR gets ``curve.csv`` (minutes, epoch, balanced accuracy per task), ``curve.json`` (the
same, with the command's total minutes to an exported, evaluated model and the run's own test figures)
and ``curve.svg`` (the chart, drawn by the report's own SVG code; ``--baseline`` adds another recipe's
curve, dashed, for a before / after picture). Run one recipe at a time on an
otherwise idle machine: two jobs on 2 cores distort every minute.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

START = time.perf_counter()  # before the heavy imports: the clock of the command, as a user waits for it


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for curve.csv / curve.json / curve.svg")
    parser.add_argument("--config", action="append", default=[], metavar="FILE")
    parser.add_argument("--baseline", type=Path, metavar="CURVE_JSON",
                        help="another recipe's curve.json, drawn dashed in the same chart (before vs after)")
    parser.add_argument("--redraw", action="store_true",
                        help="train nothing: draw OUT/curve.svg again from OUT/curve.json (and --baseline)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.redraw:
        doc = json.loads((args.out / "curve.json").read_text(encoding="utf-8"))
        baseline = json.loads(args.baseline.read_text(encoding="utf-8")) if args.baseline else None
        (args.out / "curve.svg").write_text(chart(doc, baseline), encoding="utf-8")
        return 0

    from mscvision.cli import guarded

    return guarded(lambda a: run(a), args, "scripts/time_to_accuracy.py")


def run(args: argparse.Namespace) -> int:
    import lightning as L

    from mscvision.commands.deliver import export_and_report
    from mscvision.training.config import load_config
    from mscvision.training.fit import train

    class EpochSnapshots(L.Callback):
        """The evaluated weights after each epoch, with the command's minutes so far (own cost excluded)."""

        def __init__(self):
            self.snapshots: list[tuple[int, float, dict]] = []
            self.excluded = 0.0

        def on_train_epoch_end(self, trainer, module) -> None:
            now = time.perf_counter()
            state = {k: v.detach().to("cpu", copy=True) for k, v in module.eval_net.state_dict().items()}
            self.snapshots.append((trainer.current_epoch + 1, (now - START - self.excluded) / 60, state))
            self.excluded += time.perf_counter() - now

    config = load_config(args.config, args.overrides)
    snapshots = EpochSnapshots()
    result = train(config, callbacks=(snapshots,))
    code = export_and_report(result.run_dir, config.export.precision) if config.export.enabled else 0
    total = (time.perf_counter() - START - snapshots.excluded) / 60
    print(f"command done in {total:.1f} min (snapshot copies excluded); scoring {len(snapshots.snapshots)} epochs "
          "on the test donors", flush=True)
    points = score_snapshots(config, result, snapshots.snapshots)
    baseline = json.loads(args.baseline.read_text(encoding="utf-8")) if args.baseline else None
    write_curve(args.out, points, total, result, args, baseline)
    return code


def score_snapshots(config, result, snapshots) -> list[dict]:
    """Each snapshot's plain-pass test balanced accuracy per task, on the run's own test rows."""
    import copy

    import numpy as np

    from mscvision.core.metrics import classification_metrics
    from mscvision.training.dataset_setup import prepare_data
    from mscvision.training.evaluate import view_log_probabilities
    from mscvision.training.loaders import build_loaders
    from mscvision.training.run_files import load_classifier

    data = prepare_data(config, None)
    loaders = build_loaders(config, data)
    if not np.array_equal(loaders.test_rows, result.test_rows):  # the same config and seed must give the same split
        raise RuntimeError("the test split rebuilt for scoring differs from the run's; the curve would be of "
                           "other images")
    module = load_classifier(result.checkpoint)
    net = copy.deepcopy(module.eval_net)
    points = []
    for epoch, minutes, state in snapshots:
        net.load_state_dict(state)
        module.net = net
        module.ema_net = None  # eval_net is then net: the snapshot
        logp = view_log_probabilities(module, loaders.test)
        point = {"epoch": epoch, "minutes": round(minutes, 3)}
        for task in data.tasks:
            truth = data.targets[task.name][loaders.test_rows]
            figures = classification_metrics(truth, logp[task.name][0].argmax(axis=1), task.classes)
            point[task.name] = round(float(figures["balanced_accuracy"]), 4)
        points.append(point)
        print(f"epoch {epoch:3d} at {minutes:6.2f} min: "
              + ", ".join(f"{t.name} {point[t.name]:.3f}" for t in data.tasks), flush=True)
    return points


def write_curve(out: Path, points: list[dict], total: float, result, args, baseline: dict | None = None) -> None:
    from mscvision.core.fileio import write_json_atomic, write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    tasks = [k for k in points[0] if k not in ("epoch", "minutes")] if points else []
    header = ["minutes", "epoch", *tasks]
    write_text_atomic(out / "curve.csv", "\n".join([",".join(header)] + [
        ",".join(str(p[k]) for k in header) for p in points]) + "\n")
    test = {t: result.metrics.get("test", {}).get(t, {}).get("balanced_accuracy") for t in tasks}
    write_json_atomic(out / "curve.json", {
        "command": "python scripts/time_to_accuracy.py " + " ".join(
            [*(f"--config {c}" for c in args.config), *args.overrides]),
        "run_dir": str(result.run_dir), "minutes_to_exported_and_evaluated_model": round(total, 3),
        "baseline": str(args.baseline) if args.baseline else None,
        "selected_checkpoint_test_balanced_accuracy": test, "points": points})
    write_text_atomic(out / "curve.svg", chart(json.loads((out / "curve.json").read_text(encoding="utf-8")), baseline))


def chart(doc: dict, baseline: dict | None) -> str:
    """The SVG: each task's curve, the baseline's dashed, and when each command had its exported model."""
    from mscvision.runtime.svg import Axes

    points, total = doc["points"], doc["minutes_to_exported_and_evaluated_model"]
    tasks = [k for k in points[0] if k not in ("epoch", "minutes")] if points else []
    old = baseline["points"] if baseline else []
    old_total = baseline["minutes_to_exported_and_evaluated_model"] if baseline else 0.0
    right = max([total, old_total, *[p["minutes"] for p in points + old]]) * 1.05
    ax = Axes(x=(0.0, right), y=(0.0, 1.0), width=640, height=360,
              title="time to accuracy", x_label="minutes since the command started",
              y_label="test balanced accuracy")
    colours = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")
    for task, colour in zip(tasks, colours):
        ax.line([p["minutes"] for p in points], [p[task] for p in points], colour, task, markers=True)
        if old and task in old[0]:
            ax.line([p["minutes"] for p in old], [p[task] for p in old], colour, f"{task}, baseline", dashed=True)
    ax.vline(total, label=f"exported and evaluated: {total:.1f} min")
    if old:
        ax.vline(old_total, "#7f7f7f", f"baseline exported and evaluated: {old_total:.1f} min")
    return ax.svg()


if __name__ == "__main__":
    sys.exit(main())
