"""The README's main job, end to end: `python scripts/train.py` on the synthetic default (slow, ~26 min on 2 AVX2 cores)."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_default_training_exports_a_verified_model(tmp_path):
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), f"output_dir={tmp_path / 'runs'}",
           f"data.synthetic.cache_dir={tmp_path / 'data'}", "trainer.progress_bar=false"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "default"
    metrics = json.loads((run / "metrics.json").read_text())
    for task in ("morphology", "differentiation"):
        # issue target is 0.90 (measured 0.958 / 0.930); the floor guards regressions without flaking
        assert metrics["test"][task]["balanced_accuracy"] >= 0.85, (task, metrics["test"][task])
    assert (run / "model.onnx").is_file() and not list(run.glob("*.onnx.data"))
    evaluation = json.loads((run / "evaluation" / "metrics.json").read_text())  # the ONNX file alone, as a station
    for task in ("morphology", "differentiation"):
        for key in ("balanced_accuracy", "macro_f1"):
            assert round(evaluation["tasks"][task]["metrics"][key], 3) == round(metrics["test"][task][key], 3)
    assert (run / "evaluation" / "report.html").is_file() and (run / "calibration.json").is_file()
    verify = subprocess.run([sys.executable, "-m", "mscvision", "verify", str(run / "model.onnx")],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
