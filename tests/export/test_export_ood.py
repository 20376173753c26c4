"""The learned OOD score inside the exported graph (issue 16 item 2): ``ood.score`` equals the numpy
reference on the graph's own ``features``, its statistics travel inside the one file, the metadata
carries this file's calibration scores, int8 keeps the score in float and within its gate, verify
checks it, and a run without a val split gets no learned gate and says so.

Tiny shapes runs: one plain (kNN, with int8; and the default Mahalanobis + energy), one with TTA
inside the graph (Mahalanobis), one without a val split.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from conftest import train_tiny_ema_run  # noqa: E402
from mscvision.cli import main  # noqa: E402
from mscvision.core.ood_scores import knn_score, mahalanobis_energy_score, mahalanobis_score  # noqa: E402
from mscvision.runtime.inputs import load_input  # noqa: E402
from mscvision.runtime.metadata import OOD_OUTPUT  # noqa: E402
from mscvision.runtime.model import load_model  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny_ema_run(tmp_path_factory.mktemp("ood"), "ood.k=5")


@pytest.fixture(scope="module")
def knn(trained, tmp_path_factory) -> Path:
    from mscvision.export import export_run

    return export_run(trained.run_dir, tmp_path_factory.mktemp("knn") / "knn.onnx", "int8", threads=1,
                      ood_method="knn")


@pytest.fixture(scope="module")
def mahalanobis_tta(tmp_path_factory) -> Path:
    from mscvision.export import export_run

    run = train_tiny_ema_run(tmp_path_factory.mktemp("tta"), "trainer.tta=true", "export.tta=true", epochs=2)
    return export_run(run.run_dir, tmp_path_factory.mktemp("maha") / "maha.onnx", threads=1,
                      ood_method="mahalanobis")


@pytest.fixture(scope="module")
def mahalanobis_energy(trained, tmp_path_factory) -> Path:
    from mscvision.export import export_run

    return export_run(trained.run_dir, tmp_path_factory.mktemp("maha_energy") / "me.onnx", threads=1)


def _split_paths(run_dir: Path, *splits: str) -> list[str]:
    with open(run_dir / "split.csv", newline="") as f:
        return [r["path"] for r in csv.DictReader(f) if r["split"] in splits]


def _features_and_score(model, paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([load_input(p, model.metadata) for p in paths])
    return tuple(model.session.run(["features", OOD_OUTPUT], {"input": x}))


def _initialisers(path: Path) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_knn_score_of_the_graph_equals_the_numpy_reference(trained, knn):
    model = load_model(knn, threads=1)
    learned = model.metadata.raw["ood"]["learned"]
    features, score = _features_and_score(model, _split_paths(trained.run_dir, "test", "val"))
    bank = _initialisers(knn)["ood.bank_t"].T  # (B, D): the training features, normalised, in the file
    assert learned["method"] == "knn" and learned["k"] == 5 and len(bank) == learned["bank_size"] == 18
    np.testing.assert_allclose(np.linalg.norm(bank, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(score, knn_score(features, bank, 5), atol=2e-6)
    assert score.std() > 0 and not np.allclose(score, knn_score(features, bank, 1), atol=1e-4)


def test_mahalanobis_score_of_a_tta_graph_equals_the_numpy_reference(mahalanobis_tta):
    """Under TTA the head reads the view-mean features, which is what the features output reports."""
    model = load_model(mahalanobis_tta, threads=1)
    learned = model.metadata.raw["ood"]["learned"]
    assert learned["method"] == "mahalanobis" and learned["task"] == "shape"  # the first task
    assert "8 dihedral views" in learned["features"]
    assert model.metadata.raw["test_time_augmentation"]
    run_dir = Path(model.metadata.raw["provenance"]["run_dir"])
    features, score = _features_and_score(model, _split_paths(run_dir, "test", "val"))
    stored = _initialisers(mahalanobis_tta)
    whitening = stored["ood.whitening"]
    # the class means times W, folded by the exporter into one (1, C, D) initialiser
    means = next(v for v in stored.values() if v.ndim == 3 and v.shape[2] == len(whitening)).reshape(-1, len(whitening))
    assert means.shape == (len(learned["classes"]), whitening.shape[1]) == (2, whitening.shape[1])
    np.testing.assert_allclose(score, mahalanobis_score(features, means, whitening), rtol=1e-5)
    # the precision matrix is W Wᵀ, symmetric positive definite
    precision = whitening.astype(np.float64) @ whitening.T
    assert np.allclose(precision, precision.T, atol=1e-6 * np.abs(precision).max())
    assert np.linalg.eigvalsh(precision).min() > 0


def test_mahalanobis_energy_score_of_the_graph_equals_the_numpy_reference(trained, mahalanobis_energy):
    """The default score: the standardised distance plus the standardised energy of the first task's
    logits, computed by the head from the features with a copy of that task's linear layer."""
    model = load_model(mahalanobis_energy, threads=1)
    learned = model.metadata.raw["ood"]["learned"]
    assert learned["method"] == "mahalanobis_energy" and learned["task"] == "shape"  # the default, first task
    paths = _split_paths(trained.run_dir, "test", "val")
    x = np.stack([load_input(p, model.metadata) for p in paths])
    features, score, logits = model.session.run(["features", OOD_OUTPUT, "logits.shape"], {"input": x})
    stored = _initialisers(mahalanobis_energy)
    whitening, weight_t = stored["ood.whitening"], stored["ood.head_weight_t"]
    bias = stored["net.heads.shape.bias"]  # the exporter keeps one copy of the head's bias for both uses
    means = next(v for v in stored.values() if v.ndim == 3 and v.shape[2] == len(whitening)).reshape(-1, len(whitening))
    np.testing.assert_allclose(features @ weight_t + bias, logits, atol=1e-4)  # the graph's own head, copied
    # the four standardisation constants are folded into the graph's arithmetic; the metadata states them
    reference = mahalanobis_energy_score(features, means, whitening, weight_t, bias, learned["standardise"])
    np.testing.assert_allclose(score, reference, rtol=1e-5, atol=2e-5)
    # each half moves the score: neither the distance nor the energy alone reproduces it
    assert not np.allclose(score, (mahalanobis_score(features, means, whitening) - learned["standardise"][0])
                           / learned["standardise"][1], atol=1e-3)


def test_the_bank_is_inside_the_one_file(knn):
    assert sorted(p.name for p in knn.parent.iterdir() if p.suffix == ".data") == []
    proto = onnx.load(str(knn), load_external_data=False)
    bank = next(t for t in proto.graph.initializer if t.name == "ood.bank_t")
    assert bank.data_location == onnx.TensorProto.DEFAULT and len(bank.raw_data) == 4 * 128 * 18
    onnx.checker.check_model(str(knn), full_check=True)


def test_metadata_carries_the_graphs_own_calibration_scores(trained, knn):
    """The calibration scores are this graph's scores of the val images (never trained on): what a
    station recomputes from those files, to float32 rounding."""
    model = load_model(knn, threads=1)
    raw = model.metadata.raw
    val = _split_paths(trained.run_dir, "val")
    _, score = model.predict_with_ood(np.stack([load_input(p, model.metadata) for p in val]))
    learned = raw["ood"]["learned"]
    np.testing.assert_allclose(sorted(learned["calibration_scores"]), sorted(score), atol=1e-6)
    assert learned["n_calibration"] == len(val) and "val split, 18 images" in learned["fitted_on"]
    assert raw["ood"]["alpha"] == 0.05 and raw["outputs"]["ood_score"] == OOD_OUTPUT
    low, high = np.percentile(learned["calibration_scores"], [5, 95])
    assert raw["conformance"]["ood_max_abs"] == pytest.approx(1e-3 * (high - low))  # 1/1000 of the score's spread


def test_parity_report_gates_the_score(knn):
    report = json.loads(knn.with_name("knn.parity.json").read_text())
    assert report["ood"]["fp32"]["max_relative_diff"] <= 1e-4 and report["ood"]["fp32"]["rank_correlation"] > 0.9999
    assert "ood.score" in report["gates"]["fp32"]["criteria"] and report["gates"]["fp32"]["passed"]
    int8 = report["ood"]["int8"]
    assert int8["n_images"] == report["n_images"] and "rank correlation" in report["gates"]["int8"]["criteria"]
    assert int8["rank_correlation"] >= 0.99 and int8["max_diff_over_spread"] <= 0.25  # within its gate
    assert not [f for f in report["gates"]["int8"]["failures"] if f.startswith(OOD_OUTPUT)]


def _score_nodes(proto) -> list:
    """The nodes computing ood.score from the features: everything between the two."""
    graph = proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    wanted, stack = [], [OOD_OUTPUT]
    while stack:
        node = producer.get(stack.pop())
        if node is not None and node not in wanted and "features" not in node.output:
            wanted.append(node)
            stack += list(node.input)
    return wanted


def test_int8_variant_keeps_the_score_in_float(knn):
    from mscvision.export.quantize import to_int8

    vectors = json.loads(knn.with_name("knn.vectors").joinpath("vectors.json").read_text())
    calibration = np.stack([np.fromfile(knn.with_name("knn.vectors") / c["tensor"], "<f4").reshape(c["shape"])
                            for c in vectors["cases"]])
    proto, settings = to_int8(knn, calibration)
    nodes = _score_nodes(proto)
    ops = {n.op_type for n in nodes}
    assert {"MatMul", "TopK", "Sqrt", "Div"} <= ops and not ops & {"QuantizeLinear", "DequantizeLinear"}
    assert {n.name for n in nodes} <= set(settings["kept_in_float"])
    dequantised = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert not {i for n in nodes for i in n.input} & dequantised
    bank = next(t for t in proto.graph.initializer if t.name == "ood.bank_t")
    assert bank.data_type == onnx.TensorProto.FLOAT
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in proto.graph.node}  # the backbone is int8


def test_a_kept_int8_variant_carries_its_own_calibration_scores(knn):
    variant = knn.with_name("knn.int8.onnx")
    if not variant.exists():
        pytest.skip("this tiny model's int8 variant missed its task gate (test_export covers that path)")
    fp32, int8 = (load_model(p).metadata.raw for p in (knn, variant))
    ours, theirs = (m["ood"]["learned"]["calibration_scores"] for m in (int8, fp32))
    assert len(ours) == len(theirs) and ours != theirs  # its own quantised features, its own scores
    assert int8["conformance"]["ood_max_abs"] > fp32["conformance"]["ood_max_abs"]
    assert main(["verify", str(variant), "--threads", "1"]) == 0


def test_verify_checks_the_score(knn, tmp_path, capsys):
    for name in ("knn.onnx", "knn.vectors"):
        (shutil.copytree if name.endswith("vectors") else shutil.copy)(knn.with_name(name), tmp_path / name)
    index = tmp_path / "knn.vectors" / "vectors.json"
    doc = json.loads(index.read_text())
    assert all(isinstance(c["ood_score"], float) for c in doc["cases"])
    assert main(["verify", str(tmp_path / "knn.onnx"), "--threads", "1"]) == 0
    doc["cases"][0]["ood_score"] += 0.01
    index.write_text(json.dumps(doc))
    assert main(["verify", str(tmp_path / "knn.onnx"), "--threads", "1"]) != 0
    assert "OOD score differs by 1.00e-02" in capsys.readouterr().out
    del doc["cases"][0]["ood_score"]
    index.write_text(json.dumps(doc))
    assert main(["verify", str(tmp_path / "knn.onnx"), "--threads", "1"]) != 0
    assert "'ood_score' is missing" in capsys.readouterr().out


def test_a_wrong_score_fails_the_fp32_gate(trained, tmp_path, monkeypatch, capsys):
    from mscvision.export import parity

    monkeypatch.setattr(parity, "OOD_FP32_MAX_RELATIVE_DIFF", -1.0)  # no graph can pass: the gate must bite
    out = tmp_path / "bad.onnx"
    assert main(["export", str(trained.run_dir), "--out", str(out), "--threads", "1"]) == 1
    assert not out.exists()
    report = json.loads(out.with_name("bad.parity.json").read_text())
    assert any(f.startswith("ood.score: max |Δ|") for f in report["gates"]["fp32"]["failures"])


def test_without_a_val_split_there_is_no_gate_and_the_model_says_so(tmp_path):
    from mscvision.export import export_run
    from mscvision.runtime.gate import load_gate

    run = train_tiny_ema_run(tmp_path, "data.val_fraction=0", "trainer.select=last", "calibration.enabled=false",
                             epochs=1)
    lines: list[str] = []
    out = export_run(run.run_dir, tmp_path / "noval.onnx", threads=1, log=lines.append)
    model = load_model(out, threads=1)
    raw = model.metadata.raw
    assert raw["ood"] is None and load_gate(model.metadata) is None  # nothing to calibrate either half on
    assert "No out-of-distribution gate: the run has no val split" in raw["model_card"]["known_limits"]
    assert any(line.startswith("no OOD gate (neither the learned score nor the image checks): the run has no val")
               for line in lines)
    assert OOD_OUTPUT not in [o.name for o in model.session.get_outputs()] and "ood_score" not in raw["outputs"]
    x = np.zeros((2, *model.metadata.input_shape), np.float32)
    probabilities, score = model.predict_with_ood(x)
    assert score is None and probabilities.keys() == model.predict(x).keys()
    assert "ood_max_abs" not in raw["conformance"]


def test_the_image_checks_are_fitted_on_the_bank_and_measured_on_the_calibration_images(trained, knn):
    from mscvision.core.image_checks import CHECKS, measure_image
    from mscvision.core.imageio import decode_image
    from mscvision.runtime.gate import load_gate

    metadata = load_model(knn, threads=1).metadata
    block = metadata.raw["ood"]["image_checks"]
    assert block["reference"]["n_images"] == metadata.raw["ood"]["learned"]["bank_size"] == 18
    val = _split_paths(trained.run_dir, "val")
    assert set(block["calibration_scores"]) == set(CHECKS)
    for i, path in enumerate(val):  # the station's measure of each val image is its calibration entry
        decoded = decode_image(path)
        measured = measure_image(decoded.array, metadata.spec, decoded.pixel_size_um, block["reference"], path)
        assert measured == {c: block["calibration_scores"][c][i] for c in CHECKS}
    gate = load_gate(metadata)  # runtime/gate.py reads the block export wrote
    assert gate.learned_output == OOD_OUTPUT and gate.learned_method == "knn" and gate.alpha == 0.05


def test_the_station_scores_a_blank_frame_beyond_every_calibration_image(trained, knn, tmp_path):
    """18 calibration images cannot flag at alpha 0.05 (the smallest p-value, 1/19, is above any
    Bonferroni share): the gate's p-value of a blank frame is that smallest one."""
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(blank)
    out = tmp_path / "rows.csv"
    main(["predict", "--threads", "1", str(knn), str(blank), *_split_paths(trained.run_dir, "test"), "--out", str(out)])
    with open(out, newline="") as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    assert float(rows["blank.png"]["gate.p"]) == pytest.approx(1 / 19, rel=1e-4)
    assert {r["gate"] for r in rows.values()} == {"pass"}  # a gate, not "none"


def test_a_calibration_image_too_small_for_a_check_leaves_the_gate_loadable(tmp_path):
    # the scale profile of an image smaller than its Haar pyramid is NaN: that score is left out of the
    # calibration (the station flags such an image as unmeasured), not stored to make the gate unloadable
    from types import SimpleNamespace

    from PIL import Image

    from mscvision.core.preprocess import PreprocessSpec
    from mscvision.export.ood import image_checks_block
    from mscvision.runtime.gate import gate_from_block

    rng = np.random.default_rng(0)

    def png(name: str, side: int) -> str:
        path = tmp_path / name
        Image.fromarray(rng.integers(20, 230, (side, side), dtype=np.uint8)).save(path)
        return str(path)

    bank = [png(f"bank{i}.png", 64) for i in range(6)]
    calibration = [png(f"val{i}.png", 64) for i in range(5)] + [png("tiny.png", 3)]
    learned = SimpleNamespace(bank_paths=bank, bank_bit_depths=(8,), calibration=SimpleNamespace(paths=calibration))
    block = image_checks_block(learned, PreprocessSpec(in_channels=1, size=(32, 32)))
    scores = block["calibration_scores"]
    assert len(scores["scale_profile"]) == 5 and len(scores["histogram"]) == 6
    assert all(np.isfinite(v) for values in scores.values() for v in values)
    gate = gate_from_block({"image_checks": block, "alpha": 0.05})
    assert gate is not None and "scale_profile" in gate.check_calibration


def test_export_says_which_gate_scores_can_never_fire(trained, tmp_path):
    # the tiny run's val split is far below the ~319 calibration images a check needs at alpha/16
    from mscvision.export import export_run

    lines: list[str] = []
    export_run(trained.run_dir, tmp_path / "small-val.onnx", threads=1, log=lines.append)
    warned = [line for line in lines if line.startswith("warning: OOD gate:")]
    assert any("histogram can never fire" in line for line in warned), lines
