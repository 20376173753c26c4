"""Export: one self-describing ONNX file, parity-gated, with variants and conformance vectors.

One tiny model (with EMA, so "the weights evaluated" is a real question) is trained on the shapes
fixture and exported once for the module; each test checks one promise of the artifact contract.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from conftest import station_test_balanced_accuracy, train_tiny_ema_run  # noqa: E402
from mscvision.cli import main  # noqa: E402
from mscvision.runtime.metadata import METADATA_KEY, parse_metadata  # noqa: E402
from mscvision.runtime.model import load_model  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny_ema_run(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> Path:
    from mscvision.export import export_run

    out = tmp_path_factory.mktemp("models") / "tiny.onnx"
    assert export_run(trained.run_dir, out, "int8", threads=1) == out
    return out


def test_one_file_no_side_data_checker_passes(exported):
    assert not list(exported.parent.glob("*.data"))
    proto = onnx.load(str(exported), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in proto.graph.initializer)
    assert {op.domain: op.version for op in proto.opset_import}[""] >= 17
    onnx.checker.check_model(str(exported), full_check=True)


@pytest.mark.parametrize("batch", [1, 2, 7])
def test_dynamic_batch_matches_torch(trained, exported, batch):
    from mscvision.training.module import MscClassifier

    module = MscClassifier.load_from_checkpoint(trained.checkpoint, map_location="cpu").eval()
    model = load_model(exported, threads=1)
    x = np.random.default_rng(batch).normal(size=(batch, *model.metadata.input_shape)).astype(np.float32)
    outputs = dict(zip([o.name for o in model.session.get_outputs()], model.session.run(None, {"input": x})))
    with torch.no_grad():
        features, logits = module.eval_net(torch.from_numpy(x))
        trained_features, _ = module.net(torch.from_numpy(x))
    assert module.ema_net is not None and not np.allclose(trained_features.numpy(), features.numpy(), atol=1e-3)
    np.testing.assert_allclose(outputs["features"], features.numpy(), atol=1e-4)
    for task, value in logits.items():
        np.testing.assert_allclose(outputs[f"logits.{task}"], value.numpy(), atol=1e-4)
        np.testing.assert_allclose(outputs[f"probabilities.{task}"], torch.softmax(value, 1).numpy(), atol=1e-5)


def test_runtime_reproduces_the_evaluated_test_figures(trained, exported):
    """The file holds the weights that were evaluated (the EMA here): same test balanced accuracy."""
    scores = station_test_balanced_accuracy(load_model(exported, threads=1), trained.run_dir)
    assert scores == {task: m["balanced_accuracy"] for task, m in trained.metrics["test"].items()}


def test_metadata_is_embedded_and_copied(trained, exported):
    proto = onnx.load(str(exported), load_external_data=False)
    text = next(p.value for p in proto.metadata_props if p.key == METADATA_KEY)
    meta = parse_metadata(text)
    raw = meta.raw
    config = trained.metrics["run"]
    assert [t.name for t in meta.tasks] == ["shape", "count"] and meta.tasks[0].classes == ("bar", "disc")
    assert [(t.temperature, t.threshold) for t in meta.tasks] == [(1.0, 0.0), (1.0, 0.0)]
    assert raw["temperature_applied_in_graph"] is True and raw["precision"] == "fp32"
    assert raw["input"] == {**raw["input"], "channels": 1, "height": 32, "width": 32, "dtype": "float32"}
    assert raw["provenance"]["config_hash"] == config["config_hash"]
    assert raw["provenance"]["data_manifest_sha256"] and raw["provenance"]["split_sha256"]
    assert raw["provenance"]["test_metrics"]["shape"]["n"] == trained.metrics["test"]["shape"]["n"]
    assert set(raw["model_card"]) == {"intended_use", "training_data", "figures", "known_limits"}
    assert {"torch", "onnx", "onnxruntime", "numpy", "mscvision"} <= set(raw["versions"])
    copy = json.loads(exported.with_suffix(".json").read_text())
    assert copy["file"]["sha256"] == load_model(exported).sha256
    assert {k: v for k, v in copy.items() if k != "file"} == json.loads(text)


def test_parity_report(exported):
    report = json.loads(exported.with_name("tiny.parity.json").read_text())
    assert report["split"] == "test+val" and report["gates"]["fp32"]["passed"]
    for precision in ("fp32", "int8"):
        for task in ("shape", "count"):
            figures = report[precision][task]
            assert set(figures) >= {"n_images", "max_abs_diff", "top1_agreement", "changed_predictions",
                                    "balanced_accuracy_delta"}
            assert figures["n_images"] == report["n_images"] == 24
    assert report["fp32"]["shape"]["max_abs_diff"] <= 1e-4 and report["fp32"]["shape"]["top1_agreement"] == 1.0
    assert report["gates"]["int8"]["cpu_flags"] is not None


def test_int8_variant_is_qdq_with_a_float_tail(exported):
    report = json.loads(exported.with_name("tiny.parity.json").read_text())
    variant = exported.with_name("tiny.int8.onnx")
    assert variant.is_file() == report["gates"]["int8"]["passed"]
    if not variant.is_file():
        pytest.skip("int8 missed its gate on this tiny model: export said so and kept fp32")
    proto = onnx.load(str(variant))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    softmax_inputs = {i for n in proto.graph.node if n.op_type == "Softmax" for i in n.input}
    dequantised = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert softmax_inputs and not softmax_inputs & dequantised
    meta = json.loads(next(p.value for p in proto.metadata_props if p.key == METADATA_KEY))
    assert meta["precision"] == "int8" and meta["quantization"]["calibration_split"] == "train"
    assert main(["verify", str(variant), "--threads", "1"]) == 0


def test_fp16_variant_keeps_float32_io(trained, tmp_path):
    out = tmp_path / "half.onnx"
    assert main(["export", str(trained.checkpoint), "--out", str(out), "--precision", "fp16",
                 "--threads", "1"]) == 0
    model = load_model(out.with_name("half.fp16.onnx"), threads=1)
    assert model.session.get_inputs()[0].type == "tensor(float)"
    assert model.metadata.precision == "fp16"
    report = json.loads(out.with_name("half.parity.json").read_text())
    assert report["fp16"]["shape"]["max_abs_diff"] < 1e-2


def test_parity_gate_failure_exits_nonzero(trained, tmp_path, monkeypatch, capsys):
    from mscvision.export import parity

    monkeypatch.setattr(parity, "FP32_MAX_ABS_DIFF", -1.0)  # no graph can pass: the gate must bite
    out = tmp_path / "bad.onnx"
    assert main(["export", str(trained.run_dir), "--out", str(out), "--threads", "1"]) == 1
    assert "does not reproduce the torch model" in capsys.readouterr().err
    assert not out.exists()
    report = json.loads(out.with_name("bad.parity.json").read_text())
    assert report["gates"]["fp32"]["passed"] is False and report["gates"]["fp32"]["failures"]
