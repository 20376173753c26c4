"""scripts/time_to_accuracy.py (issue 19 item 5): one point per epoch, on the clock of the command, and
the last point is the run's own test figure when the last epoch is the one evaluated."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from conftest import tiny_overrides

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "time_to_accuracy.py"


def test_curve_has_a_point_per_epoch_and_ends_at_the_runs_test_figure(shapes_dataset, tmp_path):
    out = tmp_path / "curve"
    overrides = [*tiny_overrides(shapes_dataset, tmp_path / "runs", epochs=3), "trainer.select=last",
                 "export.enabled=false"]
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *overrides], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads((out / "curve.json").read_text(encoding="utf-8"))
    points = doc["points"]
    assert [p["epoch"] for p in points] == [1, 2, 3]
    minutes = [p["minutes"] for p in points]
    assert minutes == sorted(minutes) and minutes[0] > 0
    assert doc["minutes_to_exported_and_evaluated_model"] >= minutes[-1]
    metrics = json.loads((Path(doc["run_dir"]) / "metrics.json").read_text(encoding="utf-8"))
    for task in ("shape", "count"):
        # the deployed pass is calibrated, but a temperature never moves an argmax: the same figure
        assert points[-1][task] == round(metrics["test"][task]["balanced_accuracy"], 4)
    with open(out / "curve.csv", newline="", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 3
    assert "<svg" in (out / "curve.svg").read_text(encoding="utf-8")


def test_a_baseline_curve_is_drawn_beside_the_new_one(tmp_path):
    import importlib.util
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("time_to_accuracy", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    points = [{"epoch": 1, "minutes": 1.0, "shape": 0.5}, {"epoch": 2, "minutes": 2.0, "shape": 0.8}]
    baseline = {"points": [{"epoch": 1, "minutes": 3.0, "shape": 0.4}], "minutes_to_exported_and_evaluated_model": 9.5}
    result = SimpleNamespace(metrics={"test": {"shape": {"balanced_accuracy": 0.8}}}, run_dir=tmp_path)
    args = SimpleNamespace(config=[], overrides=["a=b"], baseline=tmp_path / "old.json")
    script.write_curve(tmp_path / "c", points, 2.5, result, args, baseline)
    svg = (tmp_path / "c" / "curve.svg").read_text(encoding="utf-8")
    assert "shape, baseline" in svg and "baseline exported and evaluated: 9.5 min" in svg
    assert json.loads((tmp_path / "c" / "curve.json").read_text(encoding="utf-8"))["baseline"] == str(args.baseline)
