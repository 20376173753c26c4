"""`mscvision evaluate --ood NAME=PATH` (issue 16 item 4) in the bare station install: the OOD block of
metrics.json and the report's OOD section, from the station's own rows, on a copy of the fixture model
with a gate fitted here (as tests/runtime/test_gate.py does) and two tiny sources: artefact frames
(unlabelled) and blurred shapes (labelled: their accuracy beside the gate's flag rate)."""

from __future__ import annotations

import copy
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import make_shapes_dataset
from mscvision.cli import main
from mscvision.core.image_checks import CHECKS
from mscvision.core.image_shifts import blurred
from mscvision.core.imageio import decode_image, write_image
from mscvision.core.ood_metrics import auroc
from mscvision.runtime import predict
from mscvision.runtime.evaluate import load_labelled_data
from mscvision.runtime.gate import NO_GATE, load_gate
from mscvision.runtime.metadata import parse_metadata
from mscvision.runtime.ood_evaluation import COMBINED, FPR_KEY, gate_scores, load_ood_source, ood_figures
from mscvision.runtime.report_ood import ood_section
from runtime_fixtures import FIXTURE, model  # noqa: F401 (a pytest fixture)
from test_gate import LearnedScoreModel, _with_ood, ood_block, shapes  # noqa: F401 (ood_block: a fixture)
from test_model_checks import with_metadata


def evaluate(*args) -> int:
    return main(["evaluate", "--threads", "1", "--bootstrap", "20", *map(str, args)])


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def gated(ood_block, tmp_path_factory) -> Path:
    return with_metadata(_with_ood(ood_block), tmp_path_factory.mktemp("gated") / "gated.onnx")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("indist") / "shapes", n=16, size=32, groups=4, seed=3)


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    """Unlabelled: blank, saturated and pure-noise frames, and a 16-bit copy of a normal image (a rule)."""
    folder = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(1)
    write_image(folder / "blank.png", np.full((32, 32), 60, np.uint8) + rng.integers(0, 2, (32, 32)).astype(np.uint8))
    write_image(folder / "saturated.png", np.full((32, 32), 255, np.uint8))
    write_image(folder / "noise.png", rng.integers(0, 256, (32, 32)).astype(np.uint8))
    write_image(folder / "sixteen.png", shapes(4, 1)[0].astype(np.uint16) * 257)
    return folder


@pytest.fixture(scope="module")
def blur(data, tmp_path_factory) -> Path:
    """Labelled: the in-distribution images blurred (sigma 3 px), labels and groups kept."""
    root = tmp_path_factory.mktemp("blur")
    (root / "images").mkdir()
    rows = read_rows(data)
    for row in rows:
        x = decode_image(data.parent / row["path"]).array[:, :, 0]
        write_image(root / row["path"], blurred(x, 3.0, 255.0))
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def evaluated(gated, data, frames, blur, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval")
    assert evaluate(gated, data, "--out", out, "--ood", f"frames={frames}", "--ood", f"blur={blur.parent}") == 0
    return out


def test_the_ood_block_has_every_score_for_every_source(evaluated):
    block = json.loads((evaluated / "metrics.json").read_text())["ood"]
    names = ["focus_low", "focus_high", "saturated", "zero_clipped", "empty", "histogram", "scale_profile",
             "noise_high"]
    assert block["gate"]["scores"] == names and block["gate"]["alpha"] == 0.05
    assert set(block["sources"]) == {"frames", "blur"}
    for source in block["sources"].values():
        assert set(source["scores"]) == {*names, COMBINED}
        for figures in source["scores"].values():
            assert set(figures) == {"auroc", FPR_KEY, "flag_rate"}
            assert 0 <= figures["auroc"] <= 1 and 0 <= figures[FPR_KEY] <= 1 and 0 <= figures["flag_rate"] <= 1
    frames = block["sources"]["frames"]
    assert frames["n"] == 4 and frames["n_error"] == 0 and not frames["labelled"] and frames["accuracy"] is None
    assert frames["scores"][COMBINED]["flag_rate"] == 1.0  # every artefact frame, and the 16-bit one by its rule
    assert frames["scores"][COMBINED]["auroc"] >= 0.95
    # the all-white frame and the noise frame (its 1/256 of pixels at 255): not the blank or the 16-bit one
    assert frames["scores"]["saturated"]["flag_rate"] == 0.5


def test_the_in_distribution_flag_rate_is_that_of_the_station_rows(evaluated):
    block = json.loads((evaluated / "metrics.json").read_text())["ood"]
    rows = read_rows(evaluated / "predictions.csv")
    assert block["in_distribution"]["n"] == len(rows) == 16
    assert block["in_distribution"]["flag_rate"][COMBINED] == sum(r["gate"] == "flagged" for r in rows) / len(rows)
    # the ceiling: the AUROC of the smallest adjusted p-value (6 x 1/201, image checks alone) against the rows'
    floor = 6 / 201
    adjusted = [6 * float(r["gate.p"]) for r in rows]
    expected = np.mean([1.0 if q > floor + 1e-9 else 0.5 if abs(q - floor) <= 1e-9 else 0.0 for q in adjusted])
    assert block["in_distribution"]["combined_auroc_ceiling"] == {c: pytest.approx(expected) for c in CHECKS}


def test_the_combined_auroc_ranks_the_stations_own_p_values(evaluated, gated, frames, tmp_path):
    """With image checks alone every share is equal, so the adjusted p-value is 6 x gate.p: the combined
    AUROC must equal the AUROC of -gate.p from the station's own predictions (a separate `predict` run)."""
    block = json.loads((evaluated / "metrics.json").read_text())["ood"]
    in_p = [-float(r["gate.p"]) for r in read_rows(evaluated / "predictions.csv")]
    out = tmp_path / "frames.csv"
    main(["predict", "--threads", "1", str(gated), str(frames), "--out", str(out)])
    # the 16-bit frame was flagged by a rule: its adjusted p-value is 0, the most unusual
    frame_p = [0.0 if "16-bit" in r["reason"] else -float(r["gate.p"]) for r in read_rows(out)]
    assert block["sources"]["frames"]["scores"][COMBINED]["auroc"] == pytest.approx(auroc(in_p, frame_p))


def test_a_labelled_source_reports_its_accuracy_drop(evaluated):
    metrics = json.loads((evaluated / "metrics.json").read_text())
    blur = metrics["ood"]["sources"]["blur"]
    assert blur["labelled"] and blur["n"] == 16
    for task in ("shape", "count"):
        a = blur["accuracy"][task]
        here = metrics["tasks"][task]["metrics"]["balanced_accuracy"]  # the evaluation's own figure
        assert a["in_distribution_balanced_accuracy"] == pytest.approx(here)
        assert a["balanced_accuracy_drop"] == pytest.approx(here - a["balanced_accuracy"])
        assert a["n"] == 16
    assert metrics["ood"]["in_distribution"]["accuracy"]["shape"]["balanced_accuracy"] == pytest.approx(
        metrics["tasks"]["shape"]["metrics"]["balanced_accuracy"])


def test_the_report_has_the_ood_section_with_every_table(evaluated):
    html = (evaluated / "report.html").read_text(encoding="utf-8")
    assert "ood" in set(re.findall(r"id='([^']+)'", html))
    section = html[html.index("<section id='ood'>"):]
    section = section[:section.index("</section>")]
    for words in ("The evaluated data (in-distribution)", "Sources", "AUROC (source vs the evaluated data)",
                  "FPR at 95% TPR", "Flagged at the deployed threshold", "combined gate", "focus_low", "frames",
                  "blur", "unlabelled", "shape: "):
        assert words in section, words
    assert "<svg" not in section


def test_a_model_without_a_gate_says_so_and_still_reports_the_accuracy_drop(data, frames, blur, tmp_path, capsys):
    out = tmp_path / "eval"
    assert evaluate(FIXTURE, data, "--out", out, "--ood", f"frames={frames}", "--ood", f"blur={blur}") == 0
    block = json.loads((out / "metrics.json").read_text())["ood"]
    assert block["gate"] is None and NO_GATE in block["note"]
    assert "scores" not in block["sources"]["frames"] and block["sources"]["frames"]["n"] == 4
    assert block["sources"]["blur"]["accuracy"]["shape"]["n"] == 16
    html = (out / "report.html").read_text(encoding="utf-8")
    assert NO_GATE in html[html.index("<section id='ood'>"):]
    assert f"OOD: {NO_GATE}" in capsys.readouterr().out


@pytest.mark.parametrize("value, says", [("frames", "expected NAME=PATH"), ("x=/no/such/place", "no such folder"),
                                         ("=a", "expected NAME=PATH")])
def test_a_bad_ood_argument_is_a_usage_error(data, tmp_path, capsys, value, says):
    assert evaluate(FIXTURE, data, "--out", tmp_path / "eval", "--ood", value) == 2
    assert says in capsys.readouterr().err


def test_a_source_named_twice_is_a_usage_error(data, frames, tmp_path, capsys):
    assert evaluate(FIXTURE, data, "--out", tmp_path / "eval", "--ood", f"a={frames}", "--ood", f"a={frames}") == 2
    assert "given twice" in capsys.readouterr().err


def test_the_learned_score_is_measured_alone_and_in_the_combined_gate(model, ood_block, data, frames):
    """A stand-in model supplies learned scores (the graph output export adds): its AUROC is that of the
    scores supplied, and the combined gate weighs its p-value by its share (alpha / 2)."""
    block = {**copy.deepcopy(ood_block), "learned": {"method": "knn", "output": "ood.score", "fitted_on": "shapes",
                                                     "calibration_scores": np.linspace(0, 1, 400).tolist()}}
    metadata = parse_metadata(json.dumps(_with_ood(block)))
    labelled = load_labelled_data(data, metadata.tasks)
    in_scores = np.linspace(0.1, 0.9, len(labelled.paths))
    in_scores[-1] = 2.0  # one in-distribution image beyond every calibration score: p = 1/401
    source = load_ood_source("frames", frames, metadata.tasks)
    ood_scores = [0.5, 3.0, 4.0, 5.0]
    in_rows = list(predict.predict_files(LearnedScoreModel(model, metadata, in_scores), list(labelled.paths),
                                         batch_size=8, workers=1))
    ood_rows = list(predict.predict_files(LearnedScoreModel(model, metadata, ood_scores), list(source.paths),
                                          batch_size=8, workers=1))
    figures = ood_figures(LearnedScoreModel(model, metadata, []), in_rows, labelled.labels, [(source, ood_rows)])
    learned = figures["sources"]["frames"]["scores"]["learned"]
    assert figures["gate"]["scores"][0] == "learned" and figures["gate"]["levels"]["learned"] == pytest.approx(0.025)
    assert learned["auroc"] == pytest.approx(auroc(in_scores, ood_scores))
    assert learned["flag_rate"] == 0.75  # 3, 4 and 5 lie beyond every calibration score: p = 1/401 <= 0.025
    # the learned score's smallest adjusted p-value is (1/401) / (1/2); that one image of 16 ties with it.
    # An image check's, (1/201) / (1/12), is larger: that image (q = 0.005) lies below it too
    ceiling = figures["in_distribution"]["combined_auroc_ceiling"]
    assert ceiling["learned"] == pytest.approx(1 - 0.5 / 16) and ceiling["focus_low"] <= 1 - 1 / 16
    gate = load_gate(metadata)
    values, flags = gate_scores(gate, ood_rows)[COMBINED]
    for row, value, flag in zip(ood_rows, values, flags):
        decision = row[predict.GATE_DECISION]
        expected = 0.0 if "16-bit" in row["reason"] else min(p / gate.shares[n] for n, p in decision.p_values.items())
        assert value == pytest.approx(-expected) and flag == (row["gate"] == "flagged")
    html = ood_section(figures).body
    assert "learned (knn)" in html and "fitted on" in html

