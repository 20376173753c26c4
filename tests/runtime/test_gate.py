"""The station's OOD gate (issue 16): a model without one still loads, predicts and says so; a model
with one flags what is unlike its training images (status review, every reason, probabilities
still written but marked not to be used).

Station-side: the committed fixture, its metadata rewritten with an "ood" block fitted here on
shapes images like its training data (no torch, no onnx). The learned score's graph output comes
from the other half of the work (export); here a stand-in model supplies the scores.
"""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from mscvision.cli import main
from mscvision.core.conformal import ALPHA_SHARING
from mscvision.core.errors import ModelError
from mscvision.core.image_checks import CHECKS, CHECKS_V1, fit_reference, measure_image
from mscvision.core.imageio import write_image
from mscvision.runtime import predict
from mscvision.runtime.gate import NO_GATE, NOT_TO_BE_USED, load_gate
from mscvision.runtime.metadata import parse_metadata
from mscvision.runtime.model import load_model
from mscvision.synth.shapes import draw_shape

from runtime_fixtures import FIXTURE, images, model  # noqa: F401 (pytest fixtures)
from test_model_checks import RAW, with_metadata


def shapes(seed: int, n: int) -> list[np.ndarray]:
    """Images like the fixture's training data (synth/shapes.py), as decoded: uint8 (32, 32)."""
    rng = np.random.default_rng(seed)
    return [(draw_shape(rng, 32, ("disc", "bar")[i % 2], 1 + (i // 2) % 2) * 255).astype(np.uint8) for i in range(n)]


@pytest.fixture(scope="module")
def ood_block() -> dict:
    """Image checks fitted on 40 shapes images, calibrated on 200 others (enough for alpha/6 to fire)."""
    spec = parse_metadata(json.dumps(RAW)).spec
    reference = fit_reference(shapes(11, 40), [8])
    measured = [measure_image(x, spec, None, reference) for x in shapes(12, 200)]
    return {"image_checks": {"reference": reference,
                             "calibration_scores": {c: [m[c] for m in measured] for c in CHECKS}},
            "alpha": 0.05, "alpha_sharing": ALPHA_SHARING}


def _with_ood(block: dict) -> dict:
    raw = copy.deepcopy(RAW)
    raw["ood"] = block
    return raw


@pytest.fixture(scope="module")
def gated(ood_block, tmp_path_factory) -> Path:
    return with_metadata(_with_ood(ood_block), tmp_path_factory.mktemp("gated") / "gated.onnx")


@pytest.fixture(scope="module")
def crafted(tmp_path_factory) -> dict[str, Path]:
    """Frames no shapes model was trained on, and one 16-bit copy of a normal image."""
    folder = tmp_path_factory.mktemp("crafted")
    rng = np.random.default_rng(5)
    normal = shapes(13, 1)[0]
    frames = {"blank": np.full((32, 32), 51, np.uint8) + rng.integers(0, 2, (32, 32)).astype(np.uint8),
              "saturated": np.full((32, 32), 255, np.uint8),
              "noise": rng.integers(0, 256, (32, 32)).astype(np.uint8),
              "sixteen_bit": normal.astype(np.uint16) * 257}
    paths = {}
    for name, frame in frames.items():
        write_image(folder / f"{name}.png", frame)
        paths[name] = folder / f"{name}.png"
    return paths


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _paths(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.glob("*.png"))


# ---- a model without the gate (older format) -----------------------------------------------------------

def test_a_model_without_the_gate_loads_predicts_and_says_so(model, images, tmp_path, capsys):
    assert load_gate(model.metadata) is None
    probs, scores = model.predict_with_ood(np.zeros((2, 1, 32, 32), np.float32))
    assert scores is None and set(probs) == {"shape", "count"}
    out = tmp_path / "pred.csv"
    assert main(["predict", "--threads", "1", str(FIXTURE), *_paths(images), "--out", str(out)]) == 0
    assert NO_GATE in capsys.readouterr().err
    rows = _rows(out)
    assert {r["gate"] for r in rows} == {"none"} and {r["gate.p"] for r in rows} == {""}
    assert {r["status"] for r in rows} == {"ok"}
    assert main(["info", str(FIXTURE)]) == 0
    assert f"OOD gate     none: {NO_GATE}" in capsys.readouterr().out


# ---- a model with image checks -------------------------------------------------------------------------

def test_normal_images_pass_the_gate(gated, images, tmp_path):
    out = tmp_path / "pred.csv"
    assert main(["predict", "--threads", "1", str(gated), *_paths(images), "--out", str(out)]) == 0
    rows = _rows(out)
    assert all(r["gate"] in ("pass", "flagged") and 0 < float(r["gate.p"]) <= 1 for r in rows)
    # each image is flagged with probability <= alpha: one of six at most (it is none on this data)
    assert sum(r["gate"] == "flagged" for r in rows) <= 1
    assert all(r["shape.label"] in ("bar", "disc") for r in rows if r["gate"] == "pass")


@pytest.mark.parametrize("name, says", [
    ("blank", "an empty or near-constant field"),
    ("saturated", "of pixels saturated"),
    ("noise", "far above the training images'"),
    ("sixteen_bit", "it is 16-bit; the model was trained on 8-bit images"),
])
def test_a_flagged_image_is_review_with_its_reasons_and_still_has_probabilities(gated, crafted, tmp_path,
                                                                                 name, says):
    out = tmp_path / "pred.jsonl"
    main(["predict", "--threads", "1", str(gated), str(crafted[name]), "--out", str(out)])
    [row] = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["status"] == "review" and row["gate"] == "flagged"
    assert "OOD gate: " in row["reason"] and says in row["reason"] and NOT_TO_BE_USED in row["reason"]
    assert row["shape.label"] == row["count.label"] == "review"
    assert row["shape.p.bar"] + row["shape.p.disc"] == pytest.approx(1, abs=1e-4)  # still written
    assert isinstance(row["gate.p"], float) and list(row)[-1] == "notes"


def test_every_reason_that_fired_is_given(gated, crafted, tmp_path):
    out = tmp_path / "pred.csv"
    main(["predict", "--threads", "1", str(gated), str(crafted["saturated"]), "--out", str(out)])
    [row] = _rows(out)
    # an all-white frame is saturated, has no spread, no focus and another histogram: all four say so
    for words in ("of pixels saturated", "empty or near-constant", "focus", "intensity histogram"):
        assert words in row["reason"], words


def test_info_shows_the_gate(gated, capsys):
    assert main(["info", str(gated)]) == 0
    out = capsys.readouterr().out
    assert "OOD gate     alpha 0.05" in out and "bonferroni" in out
    assert ("focus_low, focus_high, saturated, zero_clipped, empty, histogram, scale_profile, noise_high; "
            "200 calibration images") in out
    assert "warning" not in out


def test_a_check_that_cannot_fire_is_warned_about(ood_block, tmp_path, capsys):
    block = copy.deepcopy(ood_block)
    block["image_checks"]["calibration_scores"] = {c: v[:50] for c, v in block["image_checks"]["calibration_scores"].items()}
    assert main(["info", str(with_metadata(_with_ood(block), tmp_path / "few.onnx"))]) == 0
    assert "focus_low can never fire: 50 calibration scores, 159 needed" in capsys.readouterr().out


def test_an_image_whose_checks_were_not_measured_is_flagged(gated):
    gate = load_gate(load_model(gated, threads=1).metadata)
    decision = gate.judge(None)
    assert decision.flagged and all("could not be measured" in r for r in decision.reasons)
    row = predict.result_row("x.png", {"shape": np.array([0.9, 0.1]), "count": np.array([0.2, 0.8])},
                             load_model(gated, threads=1).metadata)  # a gated model, no decision passed
    assert row["status"] == "review" and row["gate"] == "flagged" and "was not run" in row["reason"]


# ---- the learned score -------------------------------------------------------------------------------

class LearnedScoreModel:
    """The real fixture model, with metadata that names a learned score and scores supplied per image
    in input order (the graph output the export adds)."""

    def __init__(self, real, metadata, scores):
        self.metadata, self._real, self._scores = metadata, real, list(scores)

    def predict(self, batch):
        raise AssertionError("a model with a learned score must be run through predict_with_ood")

    def predict_with_ood(self, batch):
        scores, self._scores = self._scores[:len(batch)], self._scores[len(batch):]
        return self._real.predict(batch), np.array(scores, np.float32)


def test_the_learned_score_flags_by_its_own_p_value(model, ood_block, images):
    block = {**copy.deepcopy(ood_block), "learned": {
        "method": "knn", "output": "ood.score", "fitted_on": "shapes test",
        "calibration_scores": np.linspace(0.0, 1.0, 400).tolist()}}
    metadata = parse_metadata(json.dumps(_with_ood(block)))
    paths = _paths(images)
    scores = [0.3] * len(paths)
    scores[2] = 5.0  # far beyond every calibration image: p = 1/401 <= alpha/2
    rows = list(predict.predict_files(LearnedScoreModel(model, metadata, scores), paths, batch_size=4, workers=1))
    assert rows[2]["status"] == "review" and rows[2]["gate"] == "flagged"
    assert "learned OOD score (knn) 5 above the training images'" in rows[2]["reason"]
    assert rows[2]["gate.p"] == pytest.approx(1 / 401, rel=1e-5)  # written to 6 significant digits
    assert all("learned OOD score" not in r["reason"] for k, r in enumerate(rows) if k != 2)


def test_a_learned_gate_on_a_graph_without_its_output_is_refused(ood_block, tmp_path, capsys):
    block = {**copy.deepcopy(ood_block), "learned": {"method": "knn", "output": "ood.score",
                                                     "calibration_scores": [0.1, 0.2]}}
    path = with_metadata(_with_ood(block), tmp_path / "learned.onnx")
    with pytest.raises(ModelError, match="'ood.score', which the graph lacks"):
        load_model(path, threads=1)
    assert main(["info", str(path)]) == 0  # info reads the metadata without the graph
    assert "knn score from output 'ood.score'" in capsys.readouterr().out


@pytest.mark.parametrize("edit, says", [
    (lambda b: b.update(alpha=2), "alpha=2"),
    (lambda b: b["image_checks"]["calibration_scores"].update(sharpness=[1.0]), "sharpness"),
    (lambda b: b["image_checks"]["calibration_scores"].update(focus_low=[]), "non-empty list"),
    (lambda b: b.pop("image_checks"), "neither a learned score nor image checks"),
    (lambda b: b["image_checks"]["reference"].update(channels=3), "the model reads 1"),
    (lambda b: b["image_checks"]["reference"].pop("histogram_mean"), "needs histogram_mean"),
    (lambda b: b["image_checks"]["reference"].update(version=3), "version 3"),
    (lambda b: b["image_checks"]["reference"]["scale_profile"].update(levels=1), "needs scale_profile"),
    (lambda b: b["image_checks"]["reference"]["scale_profile"]["mean"][0].pop(), "needs scale_profile"),
    (lambda b: b["image_checks"]["reference"].update(version=1), "does not measure them"),
])
def test_an_unusable_gate_refuses_the_model(ood_block, tmp_path, edit, says):
    block = copy.deepcopy(ood_block)
    edit(block)
    with pytest.raises(ModelError, match="OOD gate") as caught:
        load_model(with_metadata(_with_ood(block), tmp_path / "bad.onnx"), threads=1)
    assert says in str(caught.value)


def test_the_station_measures_what_export_calibrates_with(gated, images):
    """prepare_input (one decode, at the station) and measure_image (export's calibration) agree exactly."""
    from mscvision.core.imageio import decode_image
    from mscvision.runtime.inputs import prepare_input

    metadata = load_model(gated, threads=1).metadata
    reference = metadata.raw["ood"]["image_checks"]["reference"]
    for path in _paths(images)[:3]:
        decoded = decode_image(path)
        assert prepare_input(path, metadata).checks == measure_image(decoded.array, metadata.spec,
                                                                     decoded.pixel_size_um, reference)


def test_an_unmeasured_score_flags_even_when_its_calibration_set_is_too_small_to_fire(ood_block):
    """With 20 calibration scores a check's smallest p-value (1/21) is above its level (alpha/6), so
    as a p-value a missing measure could never flag: it is a rule instead, and the station warns
    that those checks can never fire on their own."""
    from mscvision.runtime.commands import station_warnings

    small = copy.deepcopy(ood_block)
    small["image_checks"]["calibration_scores"] = {c: v[:20] for c, v in small["image_checks"]["calibration_scores"].items()}
    metadata = parse_metadata(json.dumps(_with_ood(small)))
    gate = load_gate(metadata)
    typical = {c: float(np.median(v)) for c, v in small["image_checks"]["calibration_scores"].items()}
    assert not gate.judge(typical).flagged
    missing = dict(typical, focus_low=float("nan"))
    decision = gate.judge(missing)
    assert decision.flagged and any("focus_low could not be measured" in r for r in decision.reasons)
    warnings = station_warnings(metadata)
    assert any("can never fire" in line for line in warnings)
    assert any("no certified review threshold" in line for line in warnings)  # the fixture states none


def test_a_model_exported_with_the_six_checks_of_reference_version_1_still_gates(ood_block, crafted, tmp_path):
    """Before the scale profile and noise checks: a version 1 reference and six calibrated checks.
    It loads, the station measures those six only, alpha is shared over them, and it still flags."""
    block = copy.deepcopy(ood_block)
    reference = block["image_checks"]["reference"]
    reference.pop("scale_profile")
    reference["version"] = 1
    block["image_checks"]["calibration_scores"] = {c: block["image_checks"]["calibration_scores"][c] for c in CHECKS_V1}
    path = with_metadata(_with_ood(block), tmp_path / "v1.onnx")
    gate = load_gate(load_model(path, threads=1).metadata)
    assert list(gate.check_calibration) == list(CHECKS_V1) and gate.level("focus_low") == pytest.approx(0.05 / 6)
    out = tmp_path / "rows.csv"
    main(["predict", "--threads", "1", str(path), str(crafted["noise"]), "--out", str(out)])
    [row] = _rows(out)
    assert row["gate"] == "flagged" and "focus" in row["reason"]
    assert "structure across scales" not in row["reason"] and "of full scale, far above" not in row["reason"]


def test_a_tile_whose_image_checks_fail_costs_only_itself_in_its_chunk(gated, monkeypatch) -> None:
    """qc measures a chunk's image checks at once; when that fails, each tile is measured alone, so the
    one that fails is named and the others keep their checks (runtime/predict._try_prepare_decoded_many)."""
    from mscvision.core.imageio import DecodedImage
    from mscvision.runtime import inputs

    metadata = load_model(gated).metadata
    tiles = shapes(21, 3)
    real = inputs.measure_many

    def failing_on_the_second(raws, units, reference, ordered):
        if any(np.array_equal(r[:, :, 0], tiles[1]) for r in raws):
            raise FloatingPointError("odd tile")
        return real(raws, units, reference, ordered)

    monkeypatch.setattr(inputs, "measure_many", failing_on_the_second)
    out = predict._try_prepare_decoded_many([DecodedImage(x, 8, None, ()) for x in tiles], metadata, ["a", "b", "c"])
    assert [p is None for p, _ in out] == [False, True, False]
    assert out[1][1] == "unexpected FloatingPointError while preparing it: odd tile"
    assert set(out[0][0].checks) == set(CHECKS) and set(out[2][0].checks) == set(CHECKS)
    # the group's failure is not swallowed: the tiles measured alone say why in their notes
    assert any("measuring its chunk of 3 tiles together failed (FloatingPointError: odd tile)" in n
               for n in out[0][0].notes)


def test_a_gated_scan_gives_each_tile_what_predict_gives_the_same_crop(gated, tmp_path) -> None:
    """qc prepares 16 tiles of a row at once (image checks measured together, inputs written into one
    array per row, batches sliced from it across row ends): with a gate, every tile must get predict's
    own row for the same crop (checks, gate, reasons, probabilities). Rows of 20 tiles, background tiles
    among them, batches of 5: chunks, slices and joins at row ends are all crossed."""
    from mscvision.core.imageio import write_tiled_tiff
    from mscvision.runtime.tiles import scan_field

    model = load_model(gated)
    crops = shapes(31, 40)
    blank = {3, 17, 25}
    for i in blank:
        crops[i] = np.full((32, 32), 51, np.uint8)
    crops[30] = crops[30] // 4  # a quarter of the exposure: the gate flags it
    path = tmp_path / "field.tif"
    write_tiled_tiff(path, np.block([[crops[r * 20 + c] for c in range(20)] for r in range(2)]), None, tile=64)
    scan = scan_field(model, str(path), batch_size=5, keep_rows=True)
    files = []
    for i, crop in enumerate(crops):
        write_image(tmp_path / f"{i:02d}.png", crop)
        files.append(str(tmp_path / f"{i:02d}.png"))
    rows = list(predict.predict_files(model, files))
    assert scan.error == "" and len(scan.tiles) == 40
    assert {i for i, t in enumerate(scan.tiles) if t.status == "background"} == blank
    assert scan.tiles[30].flagged
    compared = [k for k in rows[0] if k not in ("path", "notes")]
    for i, (tile, row) in enumerate(zip(scan.tiles, rows)):
        if i in blank:
            continue
        assert {k: tile.row[k] for k in compared} == {k: row[k] for k in compared}, i


def test_a_chunk_of_tiles_is_measured_in_one_call(gated, monkeypatch) -> None:
    """The chunked path is the one taken (not a silent fallback to one tile at a time)."""
    from mscvision.core.imageio import DecodedImage
    from mscvision.runtime import inputs

    calls = []
    real = inputs.measure_many
    monkeypatch.setattr(inputs, "measure_many", lambda *a: calls.append(len(a[0])) or real(*a))
    out = predict._try_prepare_decoded_many([DecodedImage(x, 8, None, ()) for x in shapes(22, 5)],
                                            load_model(gated).metadata, list("abcde"))
    assert calls == [5] and all(p is not None and p.checks for p, _ in out)
