"""`mscvision compare --lot LAYOUT.csv --spec SPEC.yaml` (issue 18 item 4): verdict changes on a reference
lot, in the bare station install. Each model judges the lot through qc's own code; the candidate is a
copy of the fixture model with a stricter review threshold for `shape` (its probabilities are the
fixture's, so its conformance vectors are the fixture's under its own SHA-256), which makes most tiles
abstain: the spec's `abstained <= 0.50` then sends its wells to REVIEW where the approved model passes.
The candidate is not in the spec's approval list: `mscvision qc` refuses it, compare judges it."""

from __future__ import annotations

import copy
import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import make_shapes_dataset
from mscvision.core.fileio import sha256_file
from mscvision.runtime.svg import esc
from mscvision.runtime.verify import default_vectors_dir
from runtime_fixtures import FIXTURE
from test_model_checks import RAW, with_metadata
from test_qc_command import CRITERIA, approval, field, run, write_spec  # noqa: F401  (approval: a fixture)

OUTPUTS = ("comparison.json", "decisions_changed.csv", "predictions_approved.csv", "predictions_candidate.csv",
           "report.html", "verdicts_changed.csv")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("cmplot") / "shapes", n=12, size=32, groups=4)


@pytest.fixture(scope="module")
def abstaining(tmp_path_factory) -> Path:
    """The fixture with `shape`'s review threshold at 0.95, and conformance vectors for it (the same
    tensors and probabilities: a threshold is applied after the graph)."""
    raw = copy.deepcopy(RAW)
    raw["tasks"][0]["threshold"] = 0.95
    model = with_metadata(raw, tmp_path_factory.mktemp("abstaining") / "abstaining.onnx")
    vectors = default_vectors_dir(model)
    shutil.copytree(default_vectors_dir(FIXTURE), vectors)
    doc = json.loads((vectors / "vectors.json").read_text(encoding="utf-8"))
    doc["model_file"], doc["model_sha256"] = model.name, sha256_file(model)
    (vectors / "vectors.json").write_text(json.dumps(doc), encoding="utf-8")
    return model


@pytest.fixture(scope="module")
def lot(tmp_path_factory) -> Path:
    """Lot L1: well A1 all discs (PASS with the fixture model), well A2 a blank field (REVIEW with any
    model: no usable tile), so the lot reviews with either model."""
    folder = tmp_path_factory.mktemp("lot")
    field(folder / "a1.tif", "disc", 1)
    field(folder / "a2.tif", "disc", 2, rows=0, blank_rows=16)
    layout = folder / "layout.csv"
    layout.write_text("path,well,lot\na1.tif,A1,L1\na2.tif,A2,L1\n", encoding="utf-8")
    return layout


def compare(approved: Path, candidate: Path, data: Path, out: Path, *extra: str) -> int:
    return run(["compare", str(approved), str(candidate), str(data), "--out", str(out), "--threads", "1",
                "--bootstrap", "50", *extra])


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_a_verdict_the_candidate_changes_is_listed_with_both_reasons(shapes, abstaining, lot, approval, tmp_path):
    spec = write_spec(tmp_path, approval, CRITERIA)
    out = tmp_path / "cmp"
    assert compare(FIXTURE, abstaining, shapes, out, "--lot", str(lot), "--spec", str(spec)) == 0
    doc = json.loads((out / "comparison.json").read_text(encoding="utf-8"))["lot_verdicts"]
    assert doc["spec"]["sha256"] == sha256_file(spec) and doc["layout"] == str(lot) and doc["n_images"] == 2
    # every unit, not only the changes: the lot and both wells, each with both verdicts and qc's reasons
    units = {(u["level"], u["unit"]): u for u in doc["units"]}
    assert [(u["level"], u["unit"]) for u in doc["units"]] == [("lot", "L1"), ("well", "L1/A1"), ("well", "L1/A2")]
    verdicts = {key: (u["approved"]["verdict"], u["candidate"]["verdict"]) for key, u in units.items()}
    assert verdicts == {("lot", "L1"): ("REVIEW", "REVIEW"), ("well", "L1/A1"): ("PASS", "REVIEW"),
                        ("well", "L1/A2"): ("REVIEW", "REVIEW")}
    assert [key for key, u in units.items() if u["changed"]] == [("well", "L1/A1")]
    # the changes: only A1, with both models' reasons
    assert doc["n_changed"] == 1 and len(doc["changes"]) == 1
    a1 = doc["changes"][0]
    assert (a1["level"], a1["unit"], a1["approved"], a1["candidate"]) == ("well", "L1/A1", "PASS", "REVIEW")
    assert a1["approved.reasons"] == units["well", "L1/A1"]["approved"]["reasons"]
    assert a1["approved.reasons"][0].startswith("every criterion is met")
    assert a1["candidate.reasons"] == units["well", "L1/A1"]["candidate"]["reasons"]
    assert any("abstained" in r for r in a1["candidate.reasons"])
    # the approved model's verdicts and reasons are the ones `mscvision qc` gives it on this lot
    assert run(["qc", "--spec", str(spec), "--model", str(FIXTURE), "--layout", str(lot), "--out",
                str(tmp_path / "qc")]) == 5
    qc = json.loads((tmp_path / "qc" / "verdicts.json").read_text(encoding="utf-8"))
    assert [(w["name"], w["verdict"], w["reasons"]) for w in qc["wells"]] == \
        [(k[1].split("/")[1], u["approved"]["verdict"], u["approved"]["reasons"]) for k, u in units.items()
         if k[0] == "well"]
    assert qc["lots"][0]["reasons"] == units["lot", "L1"]["approved"]["reasons"]

    rows = read_csv(out / "verdicts_changed.csv")
    assert list(rows[0]) == ["unit", "level", "approved", "candidate", "approved.reason", "candidate.reason"]
    assert rows == [{"unit": "L1/A1", "level": "well", "approved": "PASS", "candidate": "REVIEW",
                     "approved.reason": "; ".join(a1["approved.reasons"]),
                     "candidate.reason": "; ".join(a1["candidate.reasons"])}]
    assert not [p for p in out.iterdir() if p.name not in OUTPUTS]  # no partial file left

    html = (out / "report.html").read_text(encoding="utf-8")
    section = html[html.index("<section id='lot'>"):]
    section = section[:section.index("</section>")]
    assert "1 of 3 wells / lots changed verdict" in section
    assert "<tr class=diff><td>well</td><td>L1/A1</td><td>PASS</td><td>REVIEW</td>" in section  # highlighted
    assert "<tr><td>well</td><td>L1/A2</td><td>REVIEW</td><td>REVIEW</td>" in section  # shown, not highlighted
    assert "<tr><td>lot</td><td>L1</td><td>REVIEW</td><td>REVIEW</td>" in section
    for reason in a1["approved.reasons"] + a1["candidate.reasons"]:
        assert esc(reason) in section
    assert doc["spec"]["sha256"] in section and "verdicts_changed.csv" in html


def test_two_identical_models_change_no_verdict(shapes, lot, approval, tmp_path):
    spec = write_spec(tmp_path, approval, CRITERIA)
    out = tmp_path / "cmp"
    assert compare(FIXTURE, FIXTURE, shapes, out, "--lot", str(lot), "--spec", str(spec)) == 0
    doc = json.loads((out / "comparison.json").read_text(encoding="utf-8"))["lot_verdicts"]
    assert doc["changes"] == [] and doc["n_changed"] == 0 and len(doc["units"]) == 3
    assert all(u["approved"] == u["candidate"] and not u["changed"] for u in doc["units"])
    assert [u["approved"]["verdict"] for u in doc["units"]] == ["REVIEW", "PASS", "REVIEW"]
    assert doc["models"]["candidate"]["approved_by_spec"] is True
    assert read_csv(out / "verdicts_changed.csv") == []
    assert (out / "verdicts_changed.csv").read_text(encoding="utf-8").startswith("unit,level,approved,candidate")
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "No verdict changed (3 wells / lots judged by both)" in html
    assert "<td>L1/A1</td><td>PASS</td><td>PASS</td>" in html


@pytest.mark.parametrize("given", [("--lot",), ("--spec",)])
def test_lot_and_spec_go_together(shapes, lot, approval, tmp_path, capsys, given):
    spec = write_spec(tmp_path, approval, CRITERIA)
    value = {"--lot": str(lot), "--spec": str(spec)}
    out = tmp_path / "cmp"
    assert compare(FIXTURE, FIXTURE, shapes, out, *(a for g in given for a in (g, value[g]))) == 2
    missing = "--spec" if given == ("--lot",) else "--lot"
    assert f"{given[0]} needs {missing}" in capsys.readouterr().err
    assert not out.exists()


def test_an_unapproved_candidate_is_judged_by_compare_but_refused_by_qc(shapes, abstaining, lot, approval, tmp_path,
                                                                      capsys):
    spec = write_spec(tmp_path, approval, CRITERIA)
    assert sha256_file(abstaining) not in spec.read_text(encoding="utf-8")  # not in the approval list
    # qc itself refuses it: the approval pinning stays for a station run
    assert run(["qc", "--spec", str(spec), "--model", str(abstaining), "--layout", str(lot), "--out",
                str(tmp_path / "qc")]) == 2
    assert "not an approved model" in capsys.readouterr().err
    assert not (tmp_path / "qc" / "verdicts.json").exists()
    out = tmp_path / "cmp"
    assert compare(FIXTURE, abstaining, shapes, out, "--lot", str(lot), "--spec", str(spec)) == 0
    err = capsys.readouterr().err
    assert "NOT approved by the spec: judged anyway" in err
    doc = json.loads((out / "comparison.json").read_text(encoding="utf-8"))["lot_verdicts"]
    candidate = doc["models"]["candidate"]
    assert candidate["approved_by_spec"] is False and candidate["approval"] is None
    assert "not an approved model" in candidate["unapproved"]
    assert candidate["conformance"]["passed"] is True and candidate["sha256"] == sha256_file(abstaining)
    assert all(u["candidate"]["verdict"] in ("PASS", "FAIL", "REVIEW") for u in doc["units"])  # judged
    assert "without qc's approval refusal" in doc["note"]
    assert doc["models"]["approved"]["approved_by_spec"] is True
    html = (out / "report.html").read_text(encoding="utf-8")
    assert esc("NOT approved by the spec: judged without qc's approval refusal") in html


def test_the_approved_model_must_be_approved_by_the_spec(shapes, abstaining, lot, approval, tmp_path, capsys):
    spec = write_spec(tmp_path, approval, CRITERIA)
    out = tmp_path / "cmp"
    assert compare(abstaining, FIXTURE, shapes, out, "--lot", str(lot), "--spec", str(spec)) == 2
    assert "APPROVED must be a model the spec approves" in capsys.readouterr().err
    assert not out.exists()


def test_without_a_lot_the_report_says_how_to_get_one_and_no_stale_verdicts_remain(shapes, abstaining, lot,
                                                                                   approval, tmp_path):
    spec = write_spec(tmp_path, approval, CRITERIA)
    out = tmp_path / "cmp"
    assert compare(FIXTURE, abstaining, shapes, out, "--lot", str(lot), "--spec", str(spec)) == 0
    assert (out / "verdicts_changed.csv").exists()
    assert compare(FIXTURE, abstaining, shapes, out) == 0  # the same folder, no lot this time
    assert not (out / "verdicts_changed.csv").exists()
    doc = json.loads((out / "comparison.json").read_text(encoding="utf-8"))["lot_verdicts"]
    assert doc["changes"] is None and "--lot LAYOUT.csv" in doc["note"] and "--spec" in doc["note"]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "--lot LAYOUT.csv" in html and "not in this build" not in html
    assert {"lot"} <= set(re.findall(r"id='([^']+)'", html))


def test_a_criterion_a_model_cannot_judge_is_refused_before_anything_is_written(shapes, lot, approval, tmp_path,
                                                                               capsys):
    spec = write_spec(tmp_path, approval, ["fraction shape=triangle >= 0.5", "tiles >= 1"])
    out = tmp_path / "cmp"
    assert compare(FIXTURE, FIXTURE, shapes, out, "--lot", str(lot), "--spec", str(spec)) == 2
    assert "triangle" in capsys.readouterr().err
    assert not out.exists()
