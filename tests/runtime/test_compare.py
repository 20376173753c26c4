"""`mscvision compare` (issue 18 item 4) in the bare station install, on the committed fixture model and
copies of it with edited metadata: the changed decisions are reported image by image, the paired
difference has the right sign and interval, classes are matched by name, the outputs are written."""

from __future__ import annotations

import copy
import csv
import json
import re
from pathlib import Path

import pytest

from conftest import make_shapes_dataset
from mscvision.cli import main
from mscvision.runtime.compare import change_kind, verdict_changes
from runtime_fixtures import FIXTURE
from test_model_checks import RAW, with_metadata


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("cmp") / "shapes", n=24, size=32, groups=6)


@pytest.fixture(scope="module")
def stricter(tmp_path_factory) -> Path:
    """The fixture with a higher review threshold for `count` and another temperature in its metadata
    (already applied in the graph, so only the threshold changes what the station decides)."""
    raw = copy.deepcopy(RAW)
    raw["tasks"][1]["threshold"] = 0.8
    raw["tasks"][0]["temperature"] = 1.5
    return with_metadata(raw, tmp_path_factory.mktemp("stricter") / "stricter.onnx")


@pytest.fixture(scope="module")
def swapped(tmp_path_factory) -> Path:
    """The fixture with `shape`'s class names swapped: every shape label flips."""
    raw = copy.deepcopy(RAW)
    raw["tasks"][0]["classes"] = ["disc", "bar"]
    return with_metadata(raw, tmp_path_factory.mktemp("swapped") / "swapped.onnx")


def compare(approved: Path, candidate: Path, data: Path, out: Path) -> int:
    return main(["compare", str(approved), str(candidate), str(data), "--out", str(out), "--threads", "1",
                 "--bootstrap", "200"])


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def station_rows(out: Path, side: str) -> dict[str, dict]:
    return {row["path"]: row for row in read_csv(out / f"predictions_{side}.csv")}


def test_a_stricter_threshold_reports_every_decision_sent_to_review(shapes, stricter, tmp_path):
    out = tmp_path / "cmp"
    assert compare(FIXTURE, stricter, shapes, out) == 0
    doc = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    changed = read_csv(out / "decisions_changed.csv")
    approved, candidate = station_rows(out, "approved"), station_rows(out, "candidate")
    expected = {p for p, row in candidate.items() if row["count.label"] == "review" and
                approved[p]["count.label"] != "review"}
    assert expected and {c["path"] for c in changed} == expected  # exactly the rows whose count decision moved
    assert {c["task"] for c in changed} == {"count"} and {c["change"] for c in changed} == {"to review"}
    assert all(float(c["candidate.p"]) < 0.8 for c in changed)
    count = doc["tasks"]["count"]
    assert count["decisions"]["n"] == len(changed) and count["decisions"]["by_kind"] == {"to review": len(changed)}
    paired = count["paired"]  # the same top classes: no difference, and an interval of exactly 0
    assert paired["top_class_changed"] == 0 and paired["difference"]["balanced_accuracy"] == 0
    assert paired["intervals"]["balanced_accuracy"] == [0.0, 0.0]
    assert doc["tasks"]["shape"]["decisions"]["n"] == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert {"models", "data", "task-shape", "task-count", "lot", "notes"} <= set(re.findall(r"id='([^']+)'", html))
    assert "review below 0.8" in html and "temperature 1.5" in html  # the metadata differences are shown
    assert f"{len(changed)} decisions changed: {len(changed)} to review" in html


def test_swapped_classes_flip_every_shape_label_and_the_paired_difference_says_so(shapes, swapped, tmp_path):
    out = tmp_path / "cmp"
    assert compare(FIXTURE, swapped, shapes, out) == 0
    doc = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    shape = doc["tasks"]["shape"]
    a, b = doc["approved"]["tasks"]["shape"]["metrics"], doc["candidate"]["tasks"]["shape"]["metrics"]
    paired = shape["paired"]
    assert paired["top_class_changed"] == paired["n_images"] == 24  # classes matched by name, not by position
    assert paired["difference"]["balanced_accuracy"] == pytest.approx(b["balanced_accuracy"] - a["balanced_accuracy"])
    # a two-class label flip turns each class's recall r into 1 - r
    for cls in ("bar", "disc"):
        assert b["per_class"][cls]["recall"] == pytest.approx(1 - a["per_class"][cls]["recall"])
    low, high = paired["intervals"]["balanced_accuracy"]
    assert low <= paired["difference"]["balanced_accuracy"] <= high
    kinds = shape["decisions"]["by_kind"]
    assert set(kinds) == {"fixed", "broken"} and sum(kinds.values()) == 24
    right = sum(1 for row in read_csv(out / "predictions_approved.csv") if row["shape.label"] == row["shape.true"])
    assert kinds["broken"] == right  # each image the approved model had right is now wrong
    assert doc["tasks"]["count"]["decisions"]["n"] == 0


def test_the_same_model_changes_nothing(shapes, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert compare(FIXTURE, FIXTURE, shapes, out) == 0
    assert "the two files are the same model" in capsys.readouterr().err
    assert read_csv(out / "decisions_changed.csv") == []


def test_a_task_with_other_classes_is_not_compared(shapes, tmp_path):
    raw = copy.deepcopy(RAW)
    raw["tasks"][0]["classes"] = ["bar", "ring"]
    other = with_metadata(raw, tmp_path / "other.onnx")
    out = tmp_path / "cmp"
    assert compare(FIXTURE, other, shapes, out) == 0
    doc = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    assert list(doc["tasks"]) == ["count"] and "task shape: the classes differ" in doc["notes"][0]


def test_an_out_folder_of_another_tool_is_refused(shapes, stricter, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "report.html").write_text("someone else's")
    assert compare(FIXTURE, stricter, shapes, out) == 2
    assert (out / "report.html").read_text() == "someone else's"


def test_change_kinds_and_verdict_changes():
    assert change_kind("disc", "bar", "bar") == "fixed" and change_kind("bar", "disc", "bar") == "broken"
    assert change_kind("bar", "review", "bar") == "to review" and change_kind("review", "bar", "") == "from review"
    assert change_kind("error", "bar", "bar") == "from error"
    assert verdict_changes({"A1": "PASS", "A2": "FAIL", "lot": "REVIEW"},
                           {"A1": "PASS", "A2": "REVIEW", "B1": "PASS"}) == [
        {"unit": "A2", "approved": "FAIL", "candidate": "REVIEW"},
        {"unit": "B1", "approved": "absent", "candidate": "PASS"},
        {"unit": "lot", "approved": "REVIEW", "candidate": "absent"}]
