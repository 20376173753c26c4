"""`mscvision evaluate` (issue 15 item 3) in the bare station install, on the committed fixture model:
the report renders with every section, the figures are the station's, bad input is counted and
reported with the documented exit codes."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import make_shapes_dataset
from mscvision.cli import main
from mscvision.core.metrics import classification_metrics
from mscvision.runtime.inputs import load_input
from runtime_fixtures import FIXTURE, model  # noqa: F401,F811 (a fixture, used by name)

TASKS = ("shape", "count")
SUBSECTIONS = ("summary", "confusion", "per-class", "reliability", "risk-coverage", "groups", "errors")


def evaluate(*args: str) -> int:
    return main(["evaluate", "--threads", "1", "--bootstrap", "100", *map(str, args)])


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def rewrite_manifest(manifest: Path, edit) -> None:
    """Apply ``edit(row)`` (in place) to every row of a manifest."""
    columns, rows = read_csv(manifest)
    for i, row in enumerate(rows):
        edit(i, row)
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def shapes(tmp_path) -> Path:
    return make_shapes_dataset(tmp_path / "shapes", n=16, size=32, groups=4)


def test_the_report_renders_every_section_from_the_fixture_model(shapes, tmp_path, model):
    out = tmp_path / "eval"
    assert evaluate(FIXTURE, shapes, "--out", out) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    ids = set(re.findall(r"id='([^']+)'", html))
    expected = {"provenance", "data", "notes"} | {f"task-{t}" for t in TASKS} | {
        f"task-{t}-{s}" for t in TASKS for s in SUBSECTIONS}
    assert expected <= ids, expected - ids
    assert "gradcam" not in ids  # a .onnx file alone: no checkpoint to explain
    assert model.sha256 in html and "679fd0e6ddb80f29" in html  # file hash and config hash from the metadata
    assert html.count("<svg") == 2 * 4  # per task: two confusion matrices, reliability, risk-coverage
    assert "data:image/png;base64," in html  # the fixture makes shape errors: their thumbnails are inlined
    assert "states no abstention certificate" in html  # the fixture is an older export
    assert "<script" not in html and "http" not in html.replace("http://www.w3.org/2000/svg", "")  # self-contained


def test_the_figures_are_those_of_the_station_on_the_same_images(shapes, tmp_path, model):
    out = tmp_path / "eval"
    assert evaluate(FIXTURE, shapes, "--out", out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["schema"] == "mscvision.evaluation/1"
    assert metrics["model"]["file_sha256"] == model.sha256
    _, rows = read_csv(shapes)
    probs = model.predict(np.stack([load_input(shapes.parent / r["path"], model.metadata) for r in rows]))
    for task in model.metadata.tasks:
        y = np.array([task.classes.index(r[task.name]) for r in rows])
        expected = classification_metrics(y, probs[task.name].argmax(axis=1), task.classes)
        got = metrics["tasks"][task.name]
        assert got["metrics"]["balanced_accuracy"] == pytest.approx(expected["balanced_accuracy"])
        assert got["metrics"]["confusion_matrix"] == expected["confusion_matrix"]
        assert got["intervals"]["n_groups"] == 4
        low, high = got["intervals"]["intervals"]["balanced_accuracy"]
        assert low <= expected["balanced_accuracy"] <= high
        # temperature 1 and no TTA: softmax(logits) is the deployed probability, before == after
        assert got["calibration"]["before"]["nll"] == pytest.approx(got["calibration"]["after"]["nll"], rel=1e-5)
        assert got["abstention"]["measured"]["coverage"] == 1.0  # threshold 0: every image labelled
        worst = [g["accuracy"] for g in got["groups"]]
        assert worst == sorted(worst)
        confidences = [e["confidence"] for e in got["confident_errors"]]
        assert confidences == sorted(confidences, reverse=True)
        assert len(confidences) == len(y) - int(np.trace(np.array(expected["confusion_matrix"])))


def test_predictions_csv_is_the_station_rows_plus_the_truth(shapes, tmp_path):
    out = tmp_path / "eval"
    assert evaluate(FIXTURE, shapes, "--out", out) == 0
    columns, rows = read_csv(out / "predictions.csv")
    assert columns[:3] == ["path", "status", "reason"] and columns[-1] == "notes"
    assert {"shape.label", "shape.p.bar", "shape.true", "count.true", "group"} <= set(columns)
    _, manifest = read_csv(shapes)
    assert [r["shape.true"] for r in rows] == [r["shape"] for r in manifest]
    assert [r["group"] for r in rows] == [r["group"] for r in manifest]


def test_unreadable_images_are_error_rows_and_the_rest_is_evaluated(shapes, tmp_path, capsys):
    (shapes.parent / "images" / "img003.png").write_bytes(b"not a png at all")
    (shapes.parent / "images" / "img005.png").unlink()
    out = tmp_path / "eval"
    assert evaluate(FIXTURE, shapes, "--out", out) == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rows"] == {"ok": 14, "error": 2}
    assert sorted(Path(e["path"]).name for e in metrics["errors"]) == ["img003.png", "img005.png"]
    assert metrics["tasks"]["shape"]["metrics"]["n"] == 14
    assert metrics["tasks"]["shape"]["not_scored_error_rows"] == 2
    html = (out / "report.html").read_text()
    assert "Images that could not be evaluated" in html and "img003.png" in html
    assert "2 image(s) could not be read" in capsys.readouterr().out


def test_labels_the_model_does_not_know_are_counted_and_left_out(shapes, tmp_path, capsys):
    rewrite_manifest(shapes, lambda i, row: row.update(shape="triangle") if i < 3 else None)
    out = tmp_path / "eval"
    assert evaluate(FIXTURE, shapes, "--out", out) == 3
    task = json.loads((out / "metrics.json").read_text())["tasks"]["shape"]
    assert task["unknown_labels"]["n"] == 3 and task["unknown_labels"]["labels"] == {"triangle": 3}
    assert task["metrics"]["n"] == 13 and task["n_scored"] == 13
    assert json.loads((out / "metrics.json").read_text())["tasks"]["count"]["metrics"]["n"] == 16
    assert "triangle" in (out / "report.html").read_text()
    assert "not classes of shape" in capsys.readouterr().out


def test_a_manifest_with_none_of_the_models_tasks_is_a_usage_error(tmp_path, capsys):
    make_shapes_dataset(tmp_path / "s", n=4, size=32)
    other = tmp_path / "s" / "other.csv"
    other.write_text("path,colour,group\nimages/img000.png,red,g0\n")
    assert evaluate(FIXTURE, other, "--out", tmp_path / "eval") == 2
    err = capsys.readouterr().err
    assert str(other) in err and "none of the tasks evaluated (shape, count)" in err and "Fix:" in err
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_a_task_the_model_does_not_have_is_a_usage_error(shapes, tmp_path, capsys):
    assert evaluate(FIXTURE, shapes, "--task", "colour", "--out", tmp_path / "eval") == 2
    err = capsys.readouterr().err
    assert "--task colour" in err and "shape, count" in err


def test_a_one_task_evaluation_reads_a_label_column(shapes, tmp_path):
    rewrite_manifest(shapes, lambda i, row: row.update(label=row.pop("shape")))
    out = tmp_path / "eval"
    assert evaluate(FIXTURE, shapes, "--task", "shape", "--out", out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["tasks"]) == ["shape"] and metrics["data"]["columns"] == {"shape": "label"}
    assert metrics["tasks"]["shape"]["metrics"]["n"] == 16


def test_a_split_csv_is_evaluated_on_its_test_rows_only(shapes, tmp_path, capsys):
    _, rows = read_csv(shapes)
    split = tmp_path / "split.csv"
    sides = ["train", "test", "excluded", "val"]
    with open(split, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "group", "split", "shape", "count"])
        for i, r in enumerate(rows):
            image = (shapes.parent / r["path"]).resolve()
            writer.writerow([str(image), r["group"], sides[i % 4], r["shape"], r["count"]])
    assert evaluate(FIXTURE, split, "--out", tmp_path / "no") == 2  # a split column and no --split
    assert "--split test" in capsys.readouterr().err
    out = tmp_path / "eval"
    assert evaluate(FIXTURE, split, "--split", "test", "--out", out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["split"] == "test" and metrics["data"]["n_rows"] == 4
    _, predicted = read_csv(out / "predictions.csv")
    assert [Path(r["path"]).name for r in predicted] == [Path(rows[i]["path"]).name for i in range(1, 16, 4)]


def test_a_class_per_folder_tree_is_one_task(shapes, tmp_path):
    tree = tmp_path / "tree"
    _, rows = read_csv(shapes)
    for r in rows:
        (tree / r["shape"]).mkdir(parents=True, exist_ok=True)
        (tree / r["shape"] / Path(r["path"]).name).write_bytes((shapes.parent / r["path"]).read_bytes())
    assert evaluate(FIXTURE, tree, "--out", tmp_path / "no") == 2  # two tasks, one label per folder
    out = tmp_path / "eval"
    assert evaluate(FIXTURE, tree, "--task", "shape", "--out", out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tasks"]["shape"]["metrics"]["n"] == 16
    assert metrics["tasks"]["shape"]["intervals"]["n_groups"] == 16  # no groups: each image its own
    assert "own group" in (out / "report.html").read_text()


def test_out_must_be_a_folder_and_never_replaces_a_training_runs_files(shapes, tmp_path, capsys):
    a_file = tmp_path / "report.txt"
    a_file.write_text("keep me")
    assert evaluate(FIXTURE, shapes, "--out", a_file) == 2
    assert "is a file" in capsys.readouterr().err and a_file.read_text() == "keep me"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text('{"schema": "mscvision.metrics/1"}')
    assert evaluate(FIXTURE, shapes, "--out", run_dir) == 2
    assert json.loads((run_dir / "metrics.json").read_text())["schema"] == "mscvision.metrics/1"
    out = tmp_path / "eval"
    assert evaluate(FIXTURE, shapes, "--out", out) == 0
    assert evaluate(FIXTURE, shapes, "--out", out) == 0  # an earlier evaluation is replaced


def test_text_from_the_data_is_escaped(shapes, tmp_path):
    rewrite_manifest(shapes, lambda i, row: row.update(group="<script>alert(1)</script>") if i == 0 else None)
    out = tmp_path / "eval"
    assert evaluate(FIXTURE, shapes, "--out", out) == 0
    html = (out / "report.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = capsys.readouterr().out
    assert "exit codes:" in text and "  3  evaluated, but some images" in text


def with_metadata(model, edit):
    """The fixture model with its metadata edited (``edit(raw)``): the graph is unchanged."""
    import copy
    import dataclasses

    from mscvision.runtime.metadata import parse_metadata

    raw = copy.deepcopy(model.metadata.raw)
    edit(raw)
    return dataclasses.replace(model, metadata=parse_metadata(json.dumps(raw)))


def evaluate_directly(model, manifest: Path) -> dict:
    from mscvision.runtime.evaluate import evaluate_model, load_labelled_data

    return evaluate_model(model, load_labelled_data(manifest, model.metadata.tasks), n_boot=50).metrics


def test_abstention_is_measured_at_the_deployed_threshold_as_the_station_decides(shapes, model):
    certificate = {"certified": True, "target_accuracy": 0.9, "delta": 0.1, "n_calibration": 40, "coverage": 0.5,
                   "selective_accuracy": 0.95, "risk_bound": 0.09, "reason": "hand-made"}

    def certify(raw):
        raw["tasks"][1].update(threshold=0.6, abstention=certificate)
        raw["tasks"][0].update(threshold=1.0, abstention={**certificate, "certified": False})

    metrics = evaluate_directly(with_metadata(model, certify), shapes)
    count, shape = metrics["tasks"]["count"]["abstention"], metrics["tasks"]["shape"]["abstention"]
    assert count["certificate"] == certificate and count["target_accuracy"] == 0.9
    assert 0 < count["measured"]["n_labelled"] < 16  # the fixture's count probabilities straddle 0.6
    assert count["station"]["labelled"] == count["measured"]["n_labelled"]  # the rows decide the same
    assert shape["measured"]["n_labelled"] == 0 and shape["station"]["labelled"] == 0  # uncertified: all review
    assert metrics["rows"] == {"review": 16}
    assert count["oracle"]["coverage"] >= 0 and len(count["risk_coverage"]["coverage"]) > 1
    from mscvision.runtime.report import render_report

    html = render_report(metrics)
    assert "certified: hand-made" in html and "NOT certified: hand-made" in html


def test_a_tta_model_shows_only_the_before_figures_its_provenance_records(shapes, model):
    recorded = {"before": {"ece": 0.2, "nll": 0.9, "brier": 0.5, "n": 24}, "after": {"ece": 0.05, "nll": 0.6,
                                                                                       "brier": 0.4, "n": 24}}

    def tta(raw, record=True):
        raw["test_time_augmentation"] = "dihedral x8 inside the graph"
        if record:
            raw["provenance"]["calibration"] = {"shape": {"temperature": 1.0, "fitted_on": "val", "test": recorded}}

    metrics = evaluate_directly(with_metadata(model, tta), shapes)
    shape, count = metrics["tasks"]["shape"]["calibration"], metrics["tasks"]["count"]["calibration"]
    assert shape["before"] == recorded["before"] and shape["reliability"]["before"] is None
    assert shape["before_source"].startswith("recorded in the model's provenance")
    assert count["before"] is None and count["before_source"].startswith("none: the graph runs test-time")
    assert shape["after"]["n"] == 16  # what the model outputs is always measured on this data
    from mscvision.runtime.report import render_report

    assert "recorded at training (its test split)" in render_report(metrics)
