"""Verdicts (core/verdicts.py) on hand-made tile results: every path to PASS, FAIL and REVIEW, the lot's
worst-of rule, the verdicts.json shape and the exit codes. No image is read."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml

from mscvision.core.errors import EXIT_INPUTS_FAILED, EXIT_OK, EXIT_QC_FAIL, EXIT_QC_REVIEW
from mscvision.core.qcspec import load_spec
from mscvision.core.verdicts import (FAIL, PASS, REVIEW, UnitTiles, exit_code_for, judge, judge_lot)

DIFF = ["undifferentiated", "differentiated"]
MORPH = ["spindle", "flattened"]
SHARP = {"mean_probability": [[0.95, 0.05], [0.05, 0.95]], "n_per_class": [500, 500]}
TASKS = {"differentiation": (DIFF, SHARP), "morphology": (MORPH, SHARP)}
CRITERIA = ["fraction differentiation=undifferentiated >= 0.90", "fraction morphology=flattened <= 0.10",
            "flagged <= 0.05", "abstained <= 0.50", "tiles >= 500"]
VERDICT_KEYS = {"name", "level", "verdict", "reasons", "criteria", "counts", "fractions"}
CRITERION_KEYS = {"criterion", "kind", "task", "class", "op", "limit", "estimate", "low", "high", "result", "reason"}


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "qc.yaml"
    path.write_text(yaml.safe_dump({"format": "mscvision.qc-spec/1", "name": "test", "criteria": CRITERIA}))
    return load_spec(path)


def _probs(n: int, share_first: float, rng) -> np.ndarray:
    """n tiles, round(share_first * n) of them confidently the first class, the rest the second, shuffled."""
    first = rng.permutation(np.arange(n) < round(share_first * n))
    return np.where(first[:, None], [0.95, 0.05], [0.05, 0.95])


def _unit(undifferentiated: float = 0.98, n: int = 2000, flattened: float = 0.02, *, name="A1", level="well",
          flagged: int = 0, abstained: int = 0, errors: int = 0, problems=(), seed: int = 0,
          images=("A1_1.tif",), clusters=None) -> UnitTiles:
    rng = np.random.default_rng(seed)
    probs = {"differentiation": _probs(n, undifferentiated, rng), "morphology": _probs(n, 1 - flattened, rng)}
    labels = {task: p.argmax(axis=1) for task, p in probs.items()}
    counts = {"tiles": n + flagged + errors + 100, "background": 100, "evaluated": n + flagged, "usable": n,
              "flagged": flagged, "abstained": abstained, "errors": errors}
    return UnitTiles(name, level, list(images), counts, list(problems), probs, labels,
                     np.arange(n) // 16 if clusters is None else clusters)


def _result(verdict, kind: str, task: str | None = None):
    return next(r for r in verdict.criteria if r.kind == kind and (task is None or r.task == task))


def test_pass_when_every_whole_interval_meets_its_limit(spec):
    v = judge(_unit(), spec, TASKS)
    assert v.verdict == PASS and all(r.result == PASS for r in v.criteria)
    r = _result(v, "fraction", "differentiation")
    assert r.low >= 0.90 and r.low <= r.estimate <= r.high
    # the high end may be 1.000: with 500 calibration tiles a class, M's own error reaches the bound
    assert re.fullmatch(r"differentiation=undifferentiated 0\.\d{3} \[0\.\d{3}, [01]\.\d{3}\] >= 0\.90: the whole 95% interval meets "
                        r"the limit", r.reason), r.reason
    assert v.reasons and "every criterion is met" in v.reasons[0]


def test_fail_when_a_whole_interval_violates_and_nothing_calls_for_review(spec):
    v = judge(_unit(undifferentiated=0.70), spec, TASKS)
    r = _result(v, "fraction", "differentiation")
    assert r.high < 0.90 and r.result == FAIL and "the whole 95% interval violates the limit" in r.reason
    assert v.verdict == FAIL and any("undifferentiated" in reason for reason in v.reasons)
    v = judge(_unit(flattened=0.30), spec, TASKS)
    assert _result(v, "fraction", "morphology").low > 0.10 and v.verdict == FAIL


def test_an_interval_that_straddles_the_limit_is_review(spec):
    v = judge(_unit(undifferentiated=0.90, n=600), spec, TASKS)
    r = _result(v, "fraction", "differentiation")
    assert r.low < 0.90 < r.high and r.result == REVIEW and "straddles the limit" in r.reason
    assert v.verdict == REVIEW


def test_too_few_tiles_is_review(spec):
    v = judge(_unit(n=300), spec, TASKS)
    r = _result(v, "tiles")
    assert (r.result, r.estimate) == (REVIEW, 300) and "too little tissue" in r.reason
    assert v.verdict == REVIEW


def test_too_many_flagged_tiles_is_review(spec):
    v = judge(_unit(flagged=200), spec, TASKS)
    r = _result(v, "flagged")
    assert r.estimate == pytest.approx(200 / 2200) and r.result == REVIEW and "200 of 2200 evaluated" in r.reason
    assert v.verdict == REVIEW
    assert judge(_unit(flagged=50), spec, TASKS).verdict == PASS   # 50 / 2050 < 0.05


def test_too_many_abstained_tiles_is_review(spec):
    v = judge(_unit(abstained=1500), spec, TASKS)
    r = _result(v, "abstained")
    assert r.estimate == pytest.approx(0.75) and r.result == REVIEW and "1500 of 2000 usable" in r.reason
    assert v.verdict == REVIEW


@pytest.mark.parametrize("undifferentiated", [0.98, 0.70])  # data that would PASS, and data that would FAIL
def test_an_image_error_or_doubt_is_review_never_pass(spec, undifferentiated):
    for unit in (_unit(undifferentiated, problems=["A1_2.tif: pixel size unknown: no metadata, none declared"]),
                 _unit(undifferentiated, problems=["A1_3.tif: truncated TIFF"]),
                 _unit(undifferentiated, errors=3)):
        v = judge(unit, spec, TASKS)
        images = _result(v, "images")
        assert v.verdict == REVIEW and images.result == REVIEW
        said = unit.problems[0] if unit.problems else "3 tiles could not be evaluated"
        assert said in images.reason
        assert v.reasons[0].startswith("REVIEW: images: ")


def test_a_fraction_that_cannot_be_judged_is_review(spec):
    weak = {"mean_probability": [[0.6, 0.4], [0.5, 0.5]], "n_per_class": [50, 50]}
    v = judge(_unit(), spec, {"differentiation": (DIFF, weak), "morphology": (MORPH, SHARP)})
    r = _result(v, "fraction", "differentiation")
    assert r.result == REVIEW and "too close to correct its count" in r.reason and v.verdict == REVIEW
    empty = _unit(n=0)
    v = judge(empty, spec, TASKS)
    r = _result(v, "fraction", "differentiation")
    assert (r.result, r.low, r.high) == (REVIEW, 0.0, 1.0) and "no usable tiles" in r.reason
    assert v.verdict == REVIEW
    missing = judge(_unit(), spec, {"differentiation": (DIFF, SHARP)})  # the model lacks morphology
    assert _result(missing, "fraction", "morphology").result == REVIEW and missing.verdict == REVIEW


def test_an_unadjusted_fraction_is_judged_and_says_so(spec):
    v = judge(_unit(), spec, {"differentiation": (DIFF, None), "morphology": (MORPH, None)})
    r = _result(v, "fraction", "differentiation")
    assert "unadjusted" in r.reason and r.estimate == pytest.approx(0.98 * 0.95 + 0.02 * 0.05)


def test_the_verdict_has_the_verdicts_json_shape(spec):
    v = judge(_unit(n=0), spec, TASKS).to_dict()
    assert set(v) == VERDICT_KEYS and all(set(c) == CRITERION_KEYS for c in v["criteria"])
    assert set(v["fractions"]) == {"differentiation", "morphology"}
    assert set(v["fractions"]["morphology"]) == set(MORPH)
    assert set(v["fractions"]["differentiation"]["undifferentiated"]) == {
        "estimate", "low", "high", "naive", "raw_mean", "n", "n_effective", "design_effect", "method"}
    assert v["fractions"]["differentiation"]["undifferentiated"]["estimate"] is None   # NaN written as null
    json.dumps(v, allow_nan=False)
    quality = next(c for c in v["criteria"] if c["kind"] == "tiles")
    assert quality["task"] is None and quality["class"] is None and quality["low"] is None


def _well(name: str, undifferentiated: float, n: int = 2000, seed: int = 0, **kw) -> UnitTiles:
    return _unit(undifferentiated, n, name=name, images=[f"{name}.tif"], seed=seed, **kw)


def _lot(wells: list[UnitTiles]) -> UnitTiles:
    offset, clusters = 0, []
    for w in wells:  # cluster ids unique across wells
        clusters.append(w.clusters + offset)
        offset += int(w.clusters.max()) + 1 if len(w.clusters) else 0
    return UnitTiles("L1", "lot", [i for w in wells for i in w.images],
                     {k: sum(w.counts[k] for w in wells) for k in wells[0].counts},
                     [p for w in wells for p in w.problems],
                     {t: np.concatenate([w.probabilities[t] for w in wells]) for t in TASKS},
                     {t: np.concatenate([w.labels[t] for w in wells]) for t in TASKS}, np.concatenate(clusters))


@pytest.mark.parametrize("fractions, expected", [
    ((0.98, 0.98, 0.98), PASS),
    ((0.98, 0.70, 0.98), FAIL),
    ((0.98, 0.90, 0.98), REVIEW),      # a straddling well, no FAIL
    ((0.90, 0.70, 0.98), FAIL),        # FAIL outranks REVIEW in a lot
])
def test_a_lot_is_the_worst_of_its_wells(spec, fractions, expected):
    units = [_well(f"A{i}", f, n=600 if f == 0.90 else 2000, seed=i) for i, f in enumerate(fractions, 1)]
    wells = [judge(u, spec, TASKS) for u in units]
    lot = judge_lot(_lot(units), wells, spec, TASKS)
    assert lot.verdict == expected and lot.level == "lot" and lot.wells == [u.name for u in units]
    for w in wells:
        if w.verdict != PASS:
            assert any(reason.startswith(f"well {w.name}: {w.verdict}") for reason in lot.reasons)


def test_a_lot_fails_on_its_pooled_tiles_when_each_well_only_straddles(spec):
    units = [_well(f"B{i}", 0.87, n=600, seed=i) for i in range(1, 5)]
    wells = [judge(u, spec, TASKS) for u in units]
    assert [w.verdict for w in wells] == [REVIEW] * 4
    lot = judge_lot(_lot(units), wells, spec, TASKS)
    pooled = _result(lot, "fraction", "differentiation")
    assert pooled.high < 0.90 and lot.verdict == FAIL
    assert lot.counts["usable"] == 2400


def test_a_lot_with_a_doubted_image_never_passes(spec):
    units = [_well("C1", 0.98), _well("C2", 0.98, problems=["C2.tif: pixel size unknown"])]
    wells = [judge(u, spec, TASKS) for u in units]
    lot = judge_lot(_lot(units), wells, spec, TASKS)
    assert [w.verdict for w in wells] == [PASS, REVIEW] and lot.verdict == REVIEW


def test_exit_codes(spec):
    passed, failed = judge(_unit(), spec, TASKS), judge(_unit(0.70), spec, TASKS)
    review = judge(_unit(n=300), spec, TASKS)
    assert exit_code_for([passed, passed]) == EXIT_OK == 0
    assert exit_code_for([passed, review]) == EXIT_QC_REVIEW == 5
    assert exit_code_for([review, failed, passed]) == EXIT_QC_FAIL == 4
    assert exit_code_for([]) == EXIT_INPUTS_FAILED == 3
    assert exit_code_for(["PASS", "REVIEW"]) == EXIT_QC_REVIEW
