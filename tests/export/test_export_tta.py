"""export.tta: the exported graph averages the 8 dihedral views itself, so a station runs what the
"test_tta" figures measured; metadata and model card say so, and nothing applies it twice."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import station_test_balanced_accuracy, train_tiny_ema_run  # noqa: E402
from mscvision.cli import main  # noqa: E402
from mscvision.runtime.model import load_model  # noqa: E402


@pytest.fixture(scope="module")
def tta_run(tmp_path_factory):
    from mscvision.export import export_run

    root = tmp_path_factory.mktemp("tta")
    result = train_tiny_ema_run(root, "trainer.tta=true", "export.tta=true", epochs=2)
    out = root / "models" / "tta.onnx"
    export_run(result.run_dir, out, threads=1)
    return result, out


def _inputs(model, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *model.metadata.input_shape)).astype(np.float32)


def test_graph_runs_the_same_tta_as_evaluation(tta_run):
    from mscvision.core.calibration import apply_temperature
    from mscvision.training.evaluate import predict_probabilities, view_log_probabilities
    from mscvision.training.module import MscClassifier

    result, out = tta_run
    model = load_model(out, threads=1)
    temperatures = {t.name: t.temperature for t in model.metadata.tasks}  # applied per view, then averaged
    module = MscClassifier.load_from_checkpoint(result.checkpoint, map_location="cpu").eval()
    for batch in (1, 5):  # the batch axis stays dynamic with 8 views inside
        x = _inputs(model, batch, batch)
        views = view_log_probabilities(module, [(torch.from_numpy(x), None)], tta=True)
        expected = {task: apply_temperature(v, temperatures[task]) for task, v in views.items()}
        plain = predict_probabilities(module, [(torch.from_numpy(x), None)], tta=False)
        got = model.predict(x)
        for task in ("shape", "count"):
            assert got[task].shape == (batch, 2)
            np.testing.assert_allclose(got[task], expected[task], atol=1e-5)
            assert not np.allclose(got[task], plain[task], atol=1e-4)  # it is not the plain pass


def test_tta_graph_is_invariant_to_rotations_and_flips(tta_run):
    model = load_model(tta_run[1], threads=1)
    x = _inputs(model, 4, 7)
    reference = model.predict(x)
    for view in (np.rot90(x, 1, axes=(2, 3)), np.rot90(x, 3, axes=(2, 3)), x[..., ::-1], x[..., ::-1, :]):
        for task, probs in model.predict(np.ascontiguousarray(view)).items():
            np.testing.assert_allclose(probs, reference[task], atol=1e-5)


def test_metadata_and_figures_are_those_of_the_tta_pass(tta_run):
    result, out = tta_run
    model = load_model(out, threads=1)
    raw = model.metadata.raw
    assert raw["test_time_augmentation"].startswith("dihedral x8 inside the graph")
    assert raw["provenance"]["test_metrics_setup"] == "dihedral x8 TTA"
    for task in ("shape", "count"):
        assert raw["provenance"]["test_metrics"][task]["balanced_accuracy"] == \
            result.metrics["test_tta"][task]["balanced_accuracy"]
    assert "dihedral x8 TTA (as this graph runs)" in raw["model_card"]["figures"]
    parity = json.loads(out.with_name("tta.parity.json").read_text())
    assert parity["setup"].startswith("dihedral x8 TTA inside the graph") and parity["gates"]["fp32"]["passed"]
    # the station reproduces the TTA test figures from the image files
    scores = station_test_balanced_accuracy(model, result.run_dir)
    assert scores == {task: m["balanced_accuracy"] for task, m in result.metrics["test_tta"].items()}


def test_info_names_the_tta(tta_run, capsys):
    assert main(["info", str(tta_run[1])]) == 0
    assert "TTA          dihedral x8 inside the graph" in capsys.readouterr().out


def _predictions(path) -> dict[str, dict]:
    import csv

    with open(path, newline="") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def test_run_files_and_summary_name_the_pass_and_show_the_deployed_one(tta_run):
    """predictions_test.csv holds the pass the exported model runs (TTA here), labelled; the plain
    pass sits beside it; the console summary labels each figure's pass and marks the deployed one."""
    from mscvision.training.evaluate import summary_lines

    result, out = tta_run
    assert result.metrics["setup"]["deployed"] == "test_tta"
    deployed = _predictions(result.run_dir / "predictions_test.csv")
    plain = _predictions(result.run_dir / "predictions_test_plain.csv")
    assert deployed.keys() == plain.keys() and {r["pass"] for r in deployed.values()} == {"tta"}
    assert {r["pass"] for r in plain.values()} == {"plain"}
    from mscvision.runtime.inputs import load_input

    model = load_model(out, threads=1)
    station = model.predict(np.stack([load_input(p, model.metadata) for p in deployed]))
    for task in model.metadata.tasks:  # the station's labels from the files are the deployed rows' labels
        assert [task.classes[i] for i in station[task.name].argmax(axis=1)] == \
            [r[f"{task.name}.label"] for r in deployed.values()]
        first = f"{task.name}.p.{task.classes[0]}"
        assert [float(r[first]) for r in plain.values()] == pytest.approx(result.test_probs[task.name][:, 0], abs=1e-6)
        assert [float(r[first]) for r in deployed.values()] == \
            pytest.approx(result.test_tta_probs[task.name][:, 0], abs=1e-6)
    lines = summary_lines(result)
    tta_rows = [line for line in lines if line.startswith("test   TTA x8")]
    assert len(tta_rows) == 2 and all(line.endswith("<- the exported model") for line in tta_rows)
    for task, m in result.metrics["test_tta"].items():
        assert any(f" {task} " in line and f"{m['balanced_accuracy']:8.3f}" in line for line in tta_rows)
    plain_rows = [line for line in lines if line.startswith("test   plain")]
    assert len(plain_rows) == 2 and not any("exported" in line for line in plain_rows)
