"""Review findings on the station side: no `ok` from outputs that are not probabilities, no PASS
from a thinned vectors folder, verify on the device predict uses, a broken pipe is not a success,
`--out` suffixes, the CSV prefix rule, a fixed batch refused at load.

Station-side: runs in the bare station install on the committed fixture model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from mscvision.cli import build_parser, main
from mscvision.runtime import predict
from mscvision.runtime.metadata import parse_metadata
from mscvision.runtime.model import GraphPort, graph_problems, load_model
from mscvision.runtime.verify import verify_model

from runtime_fixtures import FIXTURE, images, model, vectors  # noqa: F401 (pytest fixtures)


def _paths(images: Path) -> list[str]:
    return sorted(str(p) for p in images.glob("*.png"))


# ---- outputs that are not probabilities -------------------------------------------------------------

class LogitsModel:
    """The real model, its ``count`` probabilities replaced by what a graph without softmax returns."""

    def __init__(self, real, replace):
        self.metadata, self._real, self._replace = real.metadata, real, replace

    def predict(self, batch):
        probs = self._real.predict(batch)
        return {**probs, "count": self._replace(probs["count"])}


@pytest.mark.parametrize("replace, why", [
    (lambda p: np.log(p) * 3.0, "outside [0, 1]"),  # logits: negative, finite
    (lambda p: p * 0.5, "sum to"),  # in [0, 1], but half a distribution
])
def test_an_output_that_is_not_a_distribution_is_an_error_row(model, images, replace, why):
    rows = list(predict.predict_files(LogitsModel(model, replace), _paths(images), batch_size=4, workers=1))
    assert [r["status"] for r in rows] == ["error"] * len(rows)
    assert all("the model's count output is not a probability distribution" in r["reason"] and why in r["reason"]
               for r in rows)
    assert all(r["count.label"] == "" and r["shape.label"] == "" for r in rows)


def test_real_softmax_rounding_is_still_ok(model, images):
    nudged = LogitsModel(model, lambda p: p + np.float32(2e-5))  # float32 rounding, well inside the slack
    assert {r["status"] for r in predict.predict_files(nudged, _paths(images), batch_size=4, workers=1)} <= {"ok", "review"}


# ---- verify: a thinned vectors folder, the device, the PASS line ------------------------------------

def _edit_cases(folder: Path, edit) -> None:
    doc = json.loads((folder / "vectors.json").read_text())
    doc["cases"] = edit(doc["cases"])
    (folder / "vectors.json").write_text(json.dumps(doc))


def test_the_fixture_states_how_many_vectors_export_wrote(model, vectors):
    cases = json.loads((vectors / "vectors.json").read_text())["cases"]
    assert model.metadata.raw["conformance"]["min_cases"] == len(cases) > 1
    assert verify_model(model, vectors).passed


def _copy_case(folder: Path, case: dict, i: int) -> dict:
    """The same image and tensor bytes under new names."""
    image, tensor = f"copy{i}_{case['image']}", f"copy{i}.input.f32"
    shutil.copy(folder / case["image"], folder / image)
    shutil.copy(folder / case["tensor"], folder / tensor)
    return {**case, "image": image, "tensor": tensor}


@pytest.mark.parametrize("thin", ["one case", "copies of one case", "renamed copies of one case"])
def test_a_thinned_vectors_folder_fails(model, vectors, thin):
    wanted = model.metadata.raw["conformance"]["min_cases"]
    edit = {"one case": lambda cases: cases[:1],
            "copies of one case": lambda cases: [cases[0]] * wanted,
            "renamed copies of one case": lambda cases: [_copy_case(vectors, cases[0], i) for i in range(wanted)]}[thin]
    _edit_cases(vectors, edit)
    report = verify_model(model, vectors)
    assert not report.passed
    assert any(f"1 distinct case(s) (by image and tensor contents), the model asks for at least {wanted}" in f
               for f in report.failures)


def test_a_model_without_min_cases_needs_one_case(model, vectors, tmp_path):
    from test_model_checks import edited, with_metadata  # the fixture with its metadata rewritten

    raw = edited()
    del raw["conformance"]["min_cases"]  # as models exported before the key was recorded
    older = load_model(with_metadata(raw, tmp_path / "older.onnx"), threads=1)
    doc = json.loads((vectors / "vectors.json").read_text())
    doc.update(model_sha256=older.sha256, cases=doc["cases"][:1])
    (vectors / "vectors.json").write_text(json.dumps(doc))
    assert verify_model(older, vectors).passed


def test_verify_takes_predicts_device_and_names_its_providers(capsys):
    verify, predict_args = (build_parser().parse_args([c, str(FIXTURE), *extra])
                            for c, extra in (("verify", []), ("predict", ["x.png"])))
    assert verify.device == predict_args.device == "auto"
    assert main(["verify", "--threads", "1", "--device", "cpu", str(FIXTURE)]) == 0
    assert "verify: PASS (8 vectors" in capsys.readouterr().out
    assert main(["verify", "--threads", "1", str(FIXTURE)]) == 0
    out = capsys.readouterr().out
    pass_line = next(line for line in out.splitlines() if line.startswith("verify: PASS"))
    assert "CPUExecutionProvider" in pass_line


@pytest.mark.parametrize("command", ["predict", "info", "verify"])
def test_a_malformed_expect_sha256_is_a_usage_error(command, capsys):
    extra = ["x.png"] if command == "predict" else []
    with pytest.raises(SystemExit) as stop:
        main([command, str(FIXTURE), *extra, "--expect-sha256", "efda59"])
    assert stop.value.code == 2
    assert "is not a SHA-256 (64 hex digits)" in capsys.readouterr().err


# ---- a closed stdout --------------------------------------------------------------------------------

def _run_into_closed_pipe(*argv: str) -> subprocess.CompletedProcess:
    """The command with its stdout a pipe whose reader has already gone (`| head -c 0`)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "mscvision", *argv], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    finally:
        os.close(write)


def test_predict_into_a_closed_pipe_is_not_a_success(images):
    result = _run_into_closed_pipe("predict", "--threads", "1", str(FIXTURE), *_paths(images))
    assert result.returncode == 3, result.stderr
    assert "broken pipe" in result.stderr and "Exception ignored" not in result.stderr


def test_info_into_a_closed_pipe_is_fine():
    result = _run_into_closed_pipe("info", str(FIXTURE))
    assert result.returncode == 0, result.stderr
    assert "Exception ignored" not in result.stderr


# ---- --out suffixes, the CSV prefix rule ------------------------------------------------------------

@pytest.mark.parametrize("name", ["preds.json", "run.png", "preds"])
def test_out_with_an_unknown_suffix_is_refused_before_any_work(images, tmp_path, name, capsys):
    out = tmp_path / name
    assert main(["predict", "--threads", "1", str(FIXTURE), *_paths(images), "--out", str(out)]) == 2
    assert ".csv, .jsonl, .ndjson" in capsys.readouterr().err
    assert not out.exists()


def test_a_leading_quote_is_always_ours():
    for name in ("'=a.png", "'plain.png", "=a.png", "''x"):
        cell = predict.csv_cell(name)
        assert cell.startswith("'") and cell[1:] == name  # strip exactly one: the name as it was
    assert predict.csv_cell("a'b.png") == "a'b.png"


# ---- the graph's batch dimension ---------------------------------------------------------------------

def test_a_fixed_batch_dimension_is_refused():
    metadata = parse_metadata(json.dumps(json.loads(FIXTURE.with_suffix(".json").read_text())))
    outs = {f"probabilities.{t}": GraphPort(f"probabilities.{t}", "tensor(float)", ("batch", 2))
            for t in ("shape", "count")}
    for batch in ("batch", None):
        assert graph_problems(metadata, {"input": GraphPort("input", "tensor(float)", (batch, 1, 32, 32))}, outs) == []
    fixed = graph_problems(metadata, {"input": GraphPort("input", "tensor(float)", (1, 1, 32, 32))}, outs)
    assert len(fixed) == 1 and "the input's batch dimension must be dynamic; re-export" in fixed[0]


def _metadata_with_abstention(abstention: dict | None, threshold: float):
    from mscvision.runtime.model import read_metadata

    raw = read_metadata(FIXTURE).raw
    for task in raw["tasks"]:
        task["threshold"] = threshold
        if abstention is None:
            task.pop("abstention", None)
        else:
            task["abstention"] = abstention
    return parse_metadata(json.dumps(raw))


def test_a_task_below_its_certified_threshold_is_reviewed_with_p_and_threshold_named():
    metadata = _metadata_with_abstention({"certified": True, "target_accuracy": 0.99, "delta": 0.05}, 0.8265)
    probs = {"shape": np.array([0.171, 0.829]), "count": np.array([0.05, 0.95])}
    assert predict.result_row("a.png", probs, metadata)["status"] == "ok"
    probs["shape"] = np.array([0.1736, 0.8264])  # just below: p rounded down, the threshold up, so the
    row = predict.result_row("a.png", probs, metadata)  # printed figures agree with the decision
    assert row["status"] == "review" and row["reason"] == "p=0.826 < 0.827 for shape"
    assert row["shape.label"] == "review" and row["count.label"] == "two"
    assert row["shape.p.disc"] == pytest.approx(0.8264)  # probabilities are still written


def test_a_task_with_no_certified_threshold_reviews_every_image():
    """A certificate that could not be given (too little calibration data for the target) must never
    let a label through, not even at p = 1.0 (a float32 softmax can round to exactly 1)."""
    metadata = _metadata_with_abstention({"certified": False, "target_accuracy": 0.99, "delta": 0.05}, 1.0)
    row = predict.result_row("a.png", {"shape": np.array([0.0, 1.0]), "count": np.array([0.0, 1.0])}, metadata)
    assert row["status"] == "review" and row["shape.label"] == "review" and row["count.label"] == "review"
    assert "no certified threshold for shape" in row["reason"] and "accuracy >= 0.99" in row["reason"]
    older = _metadata_with_abstention(None, 0.0)  # an older model states no certificate: its threshold rules
    assert predict.result_row("a.png", {"shape": np.array([0.0, 1.0]), "count": np.array([0.0, 1.0])},
                              older)["status"] == "ok"
