"""After training: export the run and judge the exported model on its own test groups.

Shared by `scripts/train.py` (the run) and `scripts/cross_validate.py` (each fold). The evaluation
runs the ONNX file exactly as a station does (`mscvision evaluate`), so RUN_DIR/evaluation/
report.html is the evidence for the model as deployed, and its test figures are the run's
metrics.json figures recomputed from the file alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def export_and_report(run_dir: Path, precision: str = "fp32", gradcam: bool = True) -> int:
    """Export RUN_DIR/model.onnx (+ variant), then write RUN_DIR/evaluation/; the evaluate exit code."""
    from mscvision.commands.evaluate import add_evaluate_arguments, run_evaluate
    from mscvision.export import export_run

    export_run(run_dir, precision=precision)
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    target = run_dir if gradcam else run_dir / "model.onnx"  # a run directory adds Grad-CAM overlays
    args = parser.parse_args([str(target), str(run_dir / "split.csv"), "--split", "test",
                              "--out", str(run_dir / "evaluation")])
    return run_evaluate(args)
