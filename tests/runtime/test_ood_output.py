"""The optional learned OOD output at the station (issue 16 item 2), bare install (no torch).

The committed fixture predates ``ood.score``: it still loads, predicts and verifies, and says it has
no learned gate. A model that declares a score its graph does not have, or declares it badly, is
refused at load with the reason.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mscvision.cli import main
from mscvision.core.errors import ModelError
from mscvision.core.ood_scores import knn_score, l2_normalise, mahalanobis_score
from mscvision.runtime.metadata import learned_output, parse_metadata
from mscvision.runtime.model import GraphPort, graph_problems, load_model
from test_model_checks import FIXTURE, RAW, edited, with_metadata

LEARNED = {"method": "knn", "output": "ood.score", "k": 1, "calibration_scores": [0.1, 0.2, 0.3]}


def test_an_older_model_without_the_score_loads_and_has_no_learned_gate():
    model = load_model(FIXTURE, threads=1)
    assert "ood" not in RAW and learned_output(model.metadata) is None
    x = np.random.default_rng(0).normal(size=(3, *model.metadata.input_shape)).astype(np.float32)
    probabilities, score = model.predict_with_ood(x)
    assert score is None
    for task, p in model.predict(x).items():
        np.testing.assert_array_equal(probabilities[task], p)
    assert main(["verify", str(FIXTURE), "--threads", "1"]) == 0


def test_a_declared_score_the_graph_lacks_is_refused_at_load(tmp_path):
    raw = edited(ood={"learned": LEARNED, "alpha": 0.05}, **{"conformance.ood_max_abs": 1e-4})
    with pytest.raises(ModelError, match="declares a learned OOD score, but the graph has no output 'ood.score'"):
        load_model(with_metadata(raw, tmp_path / "declared.onnx"), threads=1)


def test_the_score_output_must_be_float_n():
    metadata = parse_metadata(json.dumps(edited(ood={"learned": LEARNED}, **{"conformance.ood_max_abs": 1e-4})))
    inputs = {"input": GraphPort("input", "tensor(float)", ("batch", 1, 32, 32))}
    outputs = {f"probabilities.{t}": GraphPort(f"probabilities.{t}", "tensor(float)", ("batch", 2)) for t in ("shape", "count")}
    assert graph_problems(metadata, inputs, {**outputs, "ood.score": GraphPort("ood.score", "tensor(float)", ("batch",))}) == []
    wide = graph_problems(metadata, inputs, {**outputs, "ood.score": GraphPort("ood.score", "tensor(float)", ("batch", 3))})
    assert wide == ["output 'ood.score' is tensor(float)['batch', 3], expected float (N,)"]


def test_a_score_needs_its_verify_tolerance():
    with pytest.raises(ModelError, match=r"conformance.ood_max_abs=None must be a finite number > 0 for a model with a learned"):
        parse_metadata(json.dumps(edited(ood={"learned": LEARNED})), "m.onnx")
    no_gate = parse_metadata(json.dumps(edited(ood={"learned": None, "notes": ["no val split"]})))
    assert learned_output(no_gate) is None


def test_the_numpy_references_on_hand_made_features():
    bank = l2_normalise(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    features = np.array([[2.0, 0.0], [0.0, 0.0]], np.float32)
    # (1, 0): similarities 1, 0, 0.707 → the 2nd largest is 0.707; a zero vector has similarity 0 to all
    np.testing.assert_allclose(knn_score(features, bank, 2), [1 - np.sqrt(0.5), 1.0], rtol=1e-6)
    with pytest.raises(ValueError, match="between 1 and the bank size 3"):
        knn_score(features, bank, 4)
    # identity covariance: the plain Euclidean distance to the nearest mean
    means = np.array([[0.0, 0.0], [3.0, 4.0]], np.float32)
    np.testing.assert_allclose(mahalanobis_score(np.array([[3.0, 4.0], [0.6, 0.8]]), means, np.eye(2)), [0.0, 1.0],
                               atol=1e-6)
    # precision diag(4, 1) = W Wᵀ with W = diag(2, 1): distance of (1, 0) from the origin is 2
    np.testing.assert_allclose(mahalanobis_score(np.array([[1.0, 0.0]]), means[:1] @ np.diag([2.0, 1.0]),
                                                 np.diag([2.0, 1.0])), [2.0], rtol=1e-6)
