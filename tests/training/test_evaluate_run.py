"""`mscvision evaluate` on a trained, exported tiny run (training install): the evaluation reproduces
the run's own test figures from the ONNX file alone, and a run directory adds Grad-CAM overlays."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import train_tiny_ema_run  # noqa: E402
from mscvision.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from mscvision.export import export_run

    result = train_tiny_ema_run(tmp_path_factory.mktemp("evaluate"))
    export_run(result.run_dir, threads=1)
    return result


def test_evaluate_reproduces_the_runs_test_figures_and_adds_grad_cam(run, capsys):
    out = run.run_dir / "evaluation"
    code = main(["evaluate", "--threads", "1", "--bootstrap", "100", "--gradcam", "2", str(run.run_dir),
                 str(run.run_dir / "split.csv"), "--split", "test"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())  # default --out: evaluation/ beside model.onnx
    assert metrics["data"]["relation_to_model"].startswith("the model's own split.csv, test rows")
    recorded = run.metrics[run.metrics["setup"]["deployed"]]
    for task, figures in recorded.items():
        got = metrics["tasks"][task]["metrics"]
        assert got["n"] == figures["n"]
        for key in ("balanced_accuracy", "macro_f1"):
            assert f"{got[key]:.3f}" == f"{figures[key]:.3f}", (task, key)
    assert run.metrics.get("calibration"), "the tiny run is calibrated on its val split (the default)"
    for task, block in run.metrics["calibration"].items():
        got = metrics["tasks"][task]
        assert got["calibration"]["temperature"] == pytest.approx(block["temperature"], rel=1e-6)
        for key in ("ece", "nll", "brier"):
            for when in ("before", "after"):
                assert f"{got['calibration'][when][key]:.3f}" == f"{block['test'][when][key]:.3f}", (task, when, key)
        assert got["abstention"]["measured"]["coverage"] == run.metrics["abstention"][task]["test"]["coverage"]
    html = (out / "report.html").read_text()
    assert "id='gradcam'" in html and "Grad-CAM: where the model looks" in html
    assert "It is the checkpoint this model was exported from" in html
    overlays = re.search(r"<section id='gradcam'>(.*?)</section>", html, re.S).group(1)
    assert overlays.count("data:image/png;base64,") >= 2


def test_grad_cam_highlights_what_raises_the_class_score():
    """Two feature channels, one lit on the left half and one on the right; class 1's logit is the
    right channel's mean: its map is the right half (1) and nothing on the left (0), class 0's the reverse."""
    from torch import nn

    from mscvision.training.gradcam import grad_cam

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            conv = nn.Conv2d(2, 2, 1, bias=False)
            nn.init.eye_(conv.weight[:, :, 0, 0])
            self.backbone = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten())

        def forward(self, x):
            features = self.backbone(x)
            return features, {"t": features}  # logits = the pooled channels

    x = torch.zeros(1, 2, 8, 8)
    x[0, 0, :, :4] = 1
    x[0, 1, :, 4:] = 1
    right, left = grad_cam(Net(), x, "t", 1), grad_cam(Net(), x, "t", 0)
    assert right.shape == (8, 8)
    assert np.allclose(right[:, 5:], 1.0) and np.allclose(right[:, :3], 0.0)
    assert np.allclose(left[:, :3], 1.0) and np.allclose(left[:, 5:], 0.0)
