"""Synthetic QC lots: determinism, truth files that agree with each other, targets met in patches,
tiled TIFFs with their pixel size, unseen donors, the plan and the CLI's checks."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from mscvision.core.errors import ConfigError
from mscvision.core.imageio import decode_image
from mscvision.synth.cli import add_arguments, run
from mscvision.synth.dataset import PIXEL_SIZE_UM
from mscvision.synth.labels import DIFFERENTIATION_CLASSES, MORPHOLOGY_CLASSES, build_donor, donor_count
from mscvision.synth.lot import (LOT_DONOR_BASE, MIN_COVERAGE, default_plan, generate_lot, lot_zones, parse_plan,
                                 tile_boxes, tile_truth, truth_columns, truth_tiles_columns)
from mscvision.synth.render import render_field
from mscvision.synth.scene import crop_areas

TASKS = {"morphology": MORPHOLOGY_CLASSES, "differentiation": DIFFERENTIATION_CLASSES}
SIZE, TILE = 1024, 128  # 8 x 8 tiles of the station's size
PLAN = [{}, {"differentiation=osteogenic": 0.25}, {"morphology=flattened": 0.05},
        {"morphology=flattened": 0.2, "differentiation=adipogenic": 0.1}]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def lot(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lot") / "a"
    generate_lot(out, lots=2, field_size=SIZE, tile=TILE, seed=2, plan=parse_plan(PLAN))
    return out


def test_byte_identical_for_any_worker_count(lot, tmp_path):
    generate_lot(tmp_path / "b", lots=2, field_size=SIZE, tile=TILE, seed=2, plan=parse_plan(PLAN), workers=2)
    assert _files(lot) == _files(tmp_path / "b")


def test_layout_names_every_field_and_the_lots_split_the_wells(lot):
    layout = _rows(lot / "layout.csv")
    assert list(layout[0]) == ["path", "well", "lot"]
    assert [(r["well"], r["lot"]) for r in layout] == [("A1", "L1"), ("A2", "L1"), ("A3", "L2"), ("A4", "L2")]
    assert all((lot / r["path"]).is_file() for r in layout)
    truth = _rows(lot / "truth.csv")
    assert list(truth[0]) == truth_columns() and [r["path"] for r in truth] == [r["path"] for r in layout]
    donors = {r["lot"]: r["donor"] for r in truth}
    assert donors["L1"] != donors["L2"]  # one donor per lot
    meta = json.loads((lot / "lot.json").read_text())
    assert meta["tile_px"] == TILE and meta["unit"] == "tiles" and meta["min_coverage"] == MIN_COVERAGE


def test_truth_csv_is_what_truth_tiles_csv_counts(lot):
    tiles = _rows(lot / "truth_tiles.csv")
    assert list(tiles[0]) == truth_tiles_columns()
    per_image = len(tile_boxes(SIZE, SIZE, TILE))
    for well in _rows(lot / "truth.csv"):
        mine = [t for t in tiles if t["path"] == well["path"]]
        tissue = [t for t in mine if t["tissue"] == "1"]
        assert len(mine) == int(well["tiles"]) == per_image and len(tissue) == int(well["tissue_tiles"]) > 0
        for t in mine:  # the flag follows the stated minimum (the written coverage is rounded)
            if abs(float(t["coverage"]) - MIN_COVERAGE) > 1e-4:
                assert (t["tissue"] == "1") == (float(t["coverage"]) >= MIN_COVERAGE)
        for task, classes in TASKS.items():
            counted = np.array([sum(t[task] == c for t in tissue) for c in classes]) / len(tissue)
            written = np.array([float(well[f"tile.{task}.{c}"]) for c in classes])
            np.testing.assert_allclose(written, counted, atol=1e-6)
            for prefix in ("target", "area"):
                assert sum(float(well[f"{prefix}.{task}.{c}"]) for c in classes) == pytest.approx(1, abs=1e-5)


def test_the_targets_are_met_in_patches(lot):
    truth = {r["well"]: r for r in _rows(lot / "truth.csv")}
    assert float(truth["A2"]["target.differentiation.osteogenic"]) == pytest.approx(0.25)
    assert float(truth["A1"]["tile.differentiation.undifferentiated"]) >= 0.95  # a clean well reads clean
    assert float(truth["A2"]["tile.differentiation.osteogenic"]) == pytest.approx(0.25, abs=0.1)
    assert float(truth["A4"]["tile.morphology.flattened"]) == pytest.approx(0.2, abs=0.1)
    # patches, not scattered cells: an osteogenic tile's 4-neighbours are osteogenic far more often than
    # the well's osteogenic share would make them by chance
    grid = {(int(t["row"]), int(t["col"])): t["differentiation"] == "osteogenic"
            for t in _rows(lot / "truth_tiles.csv") if t["path"] == truth["A2"]["path"]}
    pairs = [grid[(r + dr, c + dc)] for (r, c), osteo in grid.items() if osteo
             for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0)) if (r + dr, c + dc) in grid]
    share = float(np.mean(list(grid.values())))
    assert np.mean(pairs) > share + 0.2


def test_the_fields_are_tiled_compressed_16_bit_tiffs_with_their_pixel_size(lot):
    path = lot / _rows(lot / "layout.csv")[0]["path"]
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    image = decode_image(path)
    assert image.array.shape == (SIZE, SIZE, 1) and image.bit_depth == 16
    assert image.pixel_size_um == pytest.approx(PIXEL_SIZE_UM, rel=1e-6)
    assert image.array.max() > 4 * 256  # uses more than 8 bits


def test_per_tile_areas_equal_the_crop_area_reference():
    rng = np.random.default_rng(0)
    target = parse_plan([{"differentiation=chondrogenic": 0.3, "morphology=rounded": 0.2}])[0]
    result = render_field(rng, build_donor(0, LOT_DONOR_BASE), 256, "phase", 16,
                          planner=lambda r, side, scale: lot_zones(r, side, 256, target, 128.0, scale))
    boxes = tile_boxes(256, 256, 96)  # 96 does not divide 256: the last row/column overlaps
    truth = tile_truth(result.cells, boxes, result.box[0])
    for t, (_, _, y0, x0, y1, x1) in enumerate(boxes):
        off = result.box[0]
        areas = crop_areas(result.cells, (y0 + off, x0 + off, y1 + off, x1 + off))
        for task, attr in (("morphology", "morph"), ("differentiation", "diff")):
            expected = np.bincount([getattr(c, attr) for c in result.cells], weights=areas,
                                   minlength=len(TASKS[task]))
            np.testing.assert_allclose(truth[task][t], expected, rtol=1e-9, atol=1e-6)


def test_tile_boxes_cover_the_image_with_the_last_row_and_column_at_the_edge():
    boxes = tile_boxes(300, 260, 128)
    assert [(b[2], b[4]) for b in boxes if b[1] == 0] == [(0, 128), (128, 256), (172, 300)]
    assert [(b[3], b[5]) for b in boxes if b[0] == 0] == [(0, 128), (128, 256), (132, 260)]
    covered = np.zeros((300, 260), bool)
    for _, _, y0, x0, y1, x1 in boxes:
        assert (y1 - y0, x1 - x0) == (128, 128)
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    assert tile_boxes(256, 256, 128)[-1] == (1, 1, 128, 128, 256, 256)


def test_lot_donors_are_none_a_training_set_has():
    assert LOT_DONOR_BASE > donor_count(10**7)  # a training set would need > 10**8 images to reach them
    training = {build_donor(0, i) for i in range(donor_count(2400))}
    assert build_donor(0, LOT_DONOR_BASE) not in training and build_donor(0, LOT_DONOR_BASE).name == "donor1000000"


def test_the_default_plan_mixes_clean_high_and_borderline_wells():
    plan = default_plan(24, seed=0)
    assert default_plan(24, seed=0) == plan and default_plan(24, seed=1) != plan
    kinds = [t.kind for t in plan]
    assert {k: kinds.count(k) for k in set(kinds)} == {"clean": 8, "high": 8, "borderline": 8}
    for t in plan:
        off = {"morphology": t.morphology[1], "differentiation": 1 - t.differentiation[0]}
        assert sum(t.morphology) == pytest.approx(1) and sum(t.differentiation) == pytest.approx(1)
        if t.kind == "clean":
            assert max(off.values()) <= 0.015
        else:
            lo, hi = (0.10, 0.30) if t.kind == "high" else (0.03, 0.07)
            assert any(lo <= v <= hi for v in off.values()) and all(v <= hi for v in off.values())
    moved = {task for t in plan if t.kind != "clean" for task in ("m", "d")
             if (t.morphology[1] if task == "m" else 1 - t.differentiation[0]) >= 0.03}
    assert moved == {"m", "d"}  # both tasks are moved somewhere in the lot


def test_an_explicit_plan_gives_the_base_class_the_rest():
    (t,) = parse_plan([{"differentiation=osteogenic": 0.2, "morphology=rounded": 0.1}])
    assert t.differentiation == pytest.approx((0.8, 0, 0.2, 0)) and t.morphology == pytest.approx((0.9, 0, 0.1))
    (t,) = parse_plan([{"morphology=spindle": 0.5, "morphology=flattened": 0.5}])
    assert t.morphology == pytest.approx((0.5, 0.5, 0))


@pytest.mark.parametrize("entries, words", [
    ([{"morphology=square": 0.1}], "unknown 'morphology=square'"),
    ([{"shape=flattened": 0.1}], "unknown"),
    ([{"morphology=flattened": 1.5}], "number in 0..1"),
    ([{"morphology=flattened": 0.7, "morphology=rounded": 0.6}], "more than 1"),
    ([{"morphology=spindle": 0.5}], "must sum to 1"),
    ([], "non-empty list"),
    (["flattened"], "is not an object"),
])
def test_a_bad_plan_is_refused_naming_the_well_and_key(entries, words):
    with pytest.raises(ConfigError, match=words):
        parse_plan(entries)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser


def test_the_cli_writes_a_lot(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([{}, {"morphology=flattened": 0.3}]))
    args = ["--lot", "--out", str(tmp_path / "l"), "--field-size", "256", "--tile", "64",
            "--lot-plan", str(plan)]
    assert run(_parser().parse_args(args)) == 0
    assert [r["well"] for r in _rows(tmp_path / "l/layout.csv")] == ["A1", "A2"]
    assert "wrote 2 wells" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["--lot", "--out", "x", "--n", "3"], "--n: not with --lot"),
    (["--out", "x", "--wells", "3"], "--wells: only with --lot"),
    (["--lot", "--out", "x", "--modality", "fluorescence"], "phase contrast only"),
    (["--lot"], "needs --out"),
    (["--lot", "--out", "x", "--field-size", "256", "--tile", "200"], "--tile 200"),
    (["--lot", "--out", "x", "--wells", "0"], "--wells 0"),
    (["--lot", "--out", "x", "--wells", "2", "--lots", "3"], "--lots 3"),
    (["--lot", "--out", "x", "--min-coverage", "1.5"], "--min-coverage"),
    (["--lot", "--out", "x", "--lot-plan", "missing.json"], "cannot be read as JSON"),
])
def test_the_cli_refuses_what_does_not_fit_a_lot(argv, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=words):
        run(_parser().parse_args(argv))
    assert not (tmp_path / "x").exists()


def test_a_plan_and_a_different_well_count_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="the lot plan has 2 wells"):
        generate_lot(tmp_path, wells=3, plan=parse_plan([{}, {}]), field_size=256, tile=64)
