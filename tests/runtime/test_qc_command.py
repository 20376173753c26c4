"""`mscvision qc` end to end on the fixture model: outputs, exit codes, refusals and bad inputs.

The fixture model (shape: bar | disc) judges fields made of its own training-like crops; the spec's
criteria are about the share of discs, so an all-disc well passes a low limit and fails a high one, and a
blank field, an unreadable file and an unknown scale go to review / error, never to PASS. The tiny
fixture model is weak (an all-disc field reads ~0.63 disc, unadjusted: it carries no confusions), so
the limit sits at 0.5: these tests are about the run, not the model."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mscvision.cli import main
from mscvision.core.imageio import write_tiled_tiff
from mscvision.core.errors import EXIT_INPUTS_FAILED

from runtime_fixtures import FIXTURE
from test_tiles import shapes_field

EXIT_PASS, EXIT_FAIL, EXIT_REVIEW, EXIT_REFUSED = 0, 4, 5, 2


def approval_block() -> str:
    printed = subprocess.run([*_cli(), "audit", "approval", str(FIXTURE)], capture_output=True, text=True,
                             check=True).stdout
    return printed.replace('change_control: ""', 'change_control: "CC-TEST"') \
                  .replace('approved_by: ""', 'approved_by: "test"')


def _cli() -> list[str]:
    import sys
    return [sys.executable, "-m", "mscvision.cli"]


@pytest.fixture(scope="module")
def approval() -> str:
    return approval_block()


def write_spec(folder: Path, approval: str, criteria: list[str], **extra: str) -> Path:
    lines = ["format: mscvision.qc-spec/1", "name: shapes test", "unit: tiles", "confidence: 0.95",
             "tiling: {overlap_px: 0, min_foreground: 0.02, block_tiles: 2}",
             f"input: {{pixel_size_um: {extra.get('pixel', 'null')}}}", "quantification: model",
             "criteria:", *[f"  - {c}" for c in criteria], "evaluation_margin: 0.02"]
    spec = folder / "spec.yaml"
    spec.write_text("\n".join(lines) + "\n" + (approval if extra.get("approved", True) else ""), encoding="utf-8")
    return spec


CRITERIA = ["fraction shape=disc >= 0.50", "flagged <= 0.20", "abstained <= 0.50", "tiles >= 20"]


def field(path: Path, shape: str, seed: int, rows: int = 16, blank_rows: int = 0) -> Path:
    write_tiled_tiff(path, shapes_field(rows, 16, shape=shape, seed=seed, blank_rows=blank_rows), None, tile=64)
    return path


def run(args: list[str]) -> int:
    try:
        return main(args)
    except SystemExit as exc:
        return int(exc.code)


def test_a_well_passes_a_limit_its_interval_meets_and_fails_one_it_violates(tmp_path: Path, approval: str) -> None:
    spec = write_spec(tmp_path, approval, CRITERIA)
    discs = [field(tmp_path / f"A1_{i}.tif", "disc", i) for i in range(2)]
    assert run(["qc", "--spec", str(spec), "--model", str(FIXTURE), *map(str, discs), "--pattern",
                r"(?P<well>[A-H]\d+)_", "--out", str(tmp_path / "pass"), "--tiles"]) == EXIT_PASS
    doc = json.loads((tmp_path / "pass" / "verdicts.json").read_text())
    assert [w["verdict"] for w in doc["wells"]] == ["PASS"] and doc["lots"][0]["verdict"] == "PASS"
    assert doc["wells"][0]["images"] == [str(p) for p in discs]
    assert doc["spec"]["sha256"] and doc["model"]["sha256"]
    for name in ("images.csv", "tiles.csv", "summary.html"):
        assert (tmp_path / "pass" / name).stat().st_size > 0
    assert len(list((tmp_path / "pass" / "overlays").glob("*.png"))) == 2
    with open(tmp_path / "pass" / "tiles.csv", newline="") as f:
        assert sum(1 for _ in csv.DictReader(f)) == 2 * 256

    # the same kind of well against a limit its whole interval violates: FAIL, exit 4
    strict = write_spec(tmp_path, approval, ["fraction shape=disc <= 0.30", *CRITERIA[1:]])
    assert run(["qc", "--spec", str(strict), "--model", str(FIXTURE), str(discs[0]), "--out",
                str(tmp_path / "fail")]) == EXIT_FAIL
    doc = json.loads((tmp_path / "fail" / "verdicts.json").read_text())
    assert doc["wells"][0]["verdict"] == "FAIL"
    reasons = " ".join(doc["wells"][0]["reasons"])
    assert "shape=disc" in reasons


def test_a_blank_field_and_an_unreadable_file_review_their_wells_and_the_rest_is_judged(tmp_path: Path,
                                                                                       approval: str) -> None:
    spec = write_spec(tmp_path, approval, CRITERIA)
    good = field(tmp_path / "good.tif", "disc", 1)
    blank = field(tmp_path / "blank.tif", "disc", 2, rows=0, blank_rows=16)
    cut = field(tmp_path / "cut.tif", "disc", 3)
    cut.write_bytes(cut.read_bytes()[:cut.stat().st_size // 2])
    layout = tmp_path / "layout.csv"
    layout.write_text("path,well,lot\ngood.tif,A1,L1\nblank.tif,A2,L1\ncut.tif,A3,L1\n")
    code = run(["qc", "--spec", str(spec), "--model", str(FIXTURE), "--layout", str(layout), "--out",
                str(tmp_path / "out")])
    doc = json.loads((tmp_path / "out" / "verdicts.json").read_text())
    verdicts = {w["name"]: w["verdict"] for w in doc["wells"]}
    assert verdicts == {"A1": "PASS", "A2": "REVIEW", "A3": "REVIEW"}
    assert doc["lots"][0]["verdict"] != "PASS" and code == EXIT_REVIEW
    by_path = {Path(im["path"]).name: im for im in doc["images"]}
    assert by_path["cut.tif"]["status"] == "error" and "truncated" in by_path["cut.tif"]["reason"]
    assert by_path["blank.tif"]["usable"] == 0 and by_path["blank.tif"]["background"] == 256


def test_only_unreadable_inputs_exit_3(tmp_path: Path, approval: str) -> None:
    spec = write_spec(tmp_path, approval, CRITERIA)
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"nope" * 100)
    assert run(["qc", "--spec", str(spec), "--model", str(FIXTURE), str(junk), "--out",
                str(tmp_path / "out")]) == EXIT_INPUTS_FAILED == 3


def test_a_layout_naming_a_missing_file_reviews_that_well_only(tmp_path: Path, approval: str) -> None:
    spec = write_spec(tmp_path, approval, CRITERIA)
    field(tmp_path / "good.tif", "disc", 1)
    layout = tmp_path / "layout.csv"
    layout.write_text("path,well,lot\ngood.tif,A1,L1\nmissing.tif,A2,L1\n")
    code = run(["qc", "--spec", str(spec), "--model", str(FIXTURE), "--layout", str(layout), "--out",
                str(tmp_path / "out")])
    doc = json.loads((tmp_path / "out" / "verdicts.json").read_text())
    assert {w["name"]: w["verdict"] for w in doc["wells"]} == {"A1": "PASS", "A2": "REVIEW"}
    assert code == EXIT_REVIEW
    missing = [im for im in doc["images"] if im["path"].endswith("missing.tif")][0]
    assert missing["status"] == "error" and "no such file" in missing["reason"]


def test_a_spec_naming_an_unknown_class_or_task_is_refused_before_any_image(tmp_path: Path, approval: str,
                                                                          capsys) -> None:
    good = field(tmp_path / "good.tif", "disc", 1)
    for criterion, named in [("fraction shape=triangle >= 0.5", "triangle"), ("fraction colour=red <= 0.1", "colour")]:
        spec = write_spec(tmp_path, approval, [criterion, "tiles >= 1"])
        assert run(["qc", "--spec", str(spec), "--model", str(FIXTURE), str(good), "--out",
                    str(tmp_path / "out")]) == EXIT_REFUSED
        assert named in capsys.readouterr().err
        assert not (tmp_path / "out" / "verdicts.json").exists()


def test_an_unapproved_model_is_refused_with_no_verdict(tmp_path: Path, capsys) -> None:
    spec = write_spec(tmp_path, "", CRITERIA, approved=False)
    good = field(tmp_path / "good.tif", "disc", 1)
    assert run(["qc", "--spec", str(spec), "--model", str(FIXTURE), str(good), "--out",
                str(tmp_path / "out")]) == EXIT_REFUSED
    assert "approv" in capsys.readouterr().err
    assert not (tmp_path / "out" / "verdicts.json").exists()


def test_the_summary_names_each_verdict(tmp_path: Path, approval: str) -> None:
    spec = write_spec(tmp_path, approval, CRITERIA)
    discs = field(tmp_path / "A1_0.tif", "disc", 0)
    run(["qc", "--spec", str(spec), "--model", str(FIXTURE), str(discs), "--out", str(tmp_path / "out")])
    html = (tmp_path / "out" / "summary.html").read_text()
    assert "PASS" in html and "A1_0" in html and "overlays/" in html
    criteria = json.loads((tmp_path / "out" / "verdicts.json").read_text())["wells"][0]["criteria"]
    fraction = [c for c in criteria if c["kind"] == "fraction"][0]
    assert fraction["low"] <= fraction["estimate"] <= fraction["high"] and fraction["result"] == "PASS"


def test_a_station_run_is_appended_to_the_audit_log_and_verifies(tmp_path: Path, approval: str) -> None:
    """Issue 18's wiring: --station appends the run (inputs' SHA-256s, verdicts) and a signed checkpoint."""
    keys = tmp_path / "keys"
    assert run(["audit", "keygen", "--out", str(keys)]) == 0
    station = tmp_path / "station.yaml"
    station.write_text(f"station_id: QC-TEST-1\nkey: {keys / 'station.key'}\nlog: {tmp_path / 'audit.jsonl'}\n"
                       "operator: tester\n")
    spec = write_spec(tmp_path, approval, CRITERIA)
    good = field(tmp_path / "A1_0.tif", "disc", 0)
    out = tmp_path / "out"
    assert run(["qc", "--spec", str(spec), "--model", str(FIXTURE), str(good), "--station", str(station),
                "--out", str(out)]) == EXIT_PASS
    doc = json.loads((out / "verdicts.json").read_text())
    assert doc["audit"]["recorded"] is True and (out / "audit-checkpoint.txt").exists()
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    text = json.dumps(records)
    assert "QC-TEST-1" in text and doc["spec"]["sha256"] in text and doc["model"]["sha256"] in text
    from mscvision.core.fileio import sha256_file
    assert sha256_file(good) in text  # the input file's SHA-256 is on record
    assert run(["audit", "verify", str(tmp_path / "audit.jsonl"), "--key", str(keys / "station.pub")]) == 0
    # a second run appends; an edit to the first run's record is then caught
    assert run(["qc", "--spec", str(spec), "--model", str(FIXTURE), str(good), "--station", str(station),
                "--out", str(tmp_path / "out2")]) == EXIT_PASS
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert len(lines) > len(records)
    edited = next(i for i, line in enumerate(lines) if '"PASS"' in line)  # the first run's verdict record
    lines[edited] = lines[edited].replace('"PASS"', '"FAIL"', 1)
    (tmp_path / "audit.jsonl").write_text("\n".join(lines) + "\n")
    assert run(["audit", "verify", str(tmp_path / "audit.jsonl"), "--key", str(keys / "station.pub")]) == 6
