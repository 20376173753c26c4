"""The QC spec (core/qcspec.py): the example loads; every malformed key stops the load with a message
that names the key (and the fix); criteria the model cannot judge are named before any image."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest
import yaml

from mscvision.core.errors import ConfigError
from mscvision.core.qcspec import CRITERION_FORMS, load_spec, parse_criterion, spec_problems_for_model

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "configs" / "qc" / "example.yaml"
TASKS = {"morphology": ["spindle", "flattened", "rounded"],
         "differentiation": ["undifferentiated", "adipogenic", "osteogenic", "chondrogenic"]}
BASE = {"format": "mscvision.qc-spec/1", "name": "test spec", "unit": "tiles", "confidence": 0.95,
        "tiling": {"overlap_px": 0, "min_foreground": 0.05, "block_tiles": 4}, "input": {"pixel_size_um": None},
        "quantification": "model", "criteria": ["fraction differentiation=undifferentiated >= 0.90", "tiles >= 500"],
        "evaluation_margin": 0.02}
APPROVAL = {"models": [{"sha256": "ab" * 32, "name": "m", "precision": "fp32",
                        "tasks": {"morphology": {"classes": TASKS["morphology"]}}}]}


def _write(tmp_path: Path, spec: dict | str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def _with(**changes) -> dict:
    spec = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        section = spec
        for parent in parents:
            section = section.setdefault(parent, {})
        if value is _DELETE:
            section.pop(key, None)
        else:
            section[key] = value
    return spec


_DELETE = object()


def test_the_example_loads_with_its_hash_and_no_approval():
    spec = load_spec(EXAMPLE)
    assert spec.sha256 == hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()
    assert spec.unit == "tiles" and spec.confidence == 0.95 and spec.quantification == "model"
    assert spec.tiling.block_tiles == 4 and spec.tiling.overlap_px == 0 and spec.pixel_size_um is None
    assert spec.approval is None and "approval" not in spec.raw
    kinds = [c.kind for c in spec.criteria]
    assert kinds == ["fraction", "fraction", "flagged", "abstained", "tiles"]
    first = spec.criteria[0]
    assert (first.task, first.cls, first.op, first.limit, first.limit_text) == (
        "differentiation", "undifferentiated", ">=", 0.90, "0.90")
    assert spec_problems_for_model(spec, TASKS) == []


def test_defaults_fill_the_optional_keys(tmp_path):
    minimal = {"format": "mscvision.qc-spec/1", "name": "minimal", "criteria": ["tiles >= 10"]}
    spec = load_spec(_write(tmp_path, minimal))
    assert (spec.confidence, spec.unit, spec.evaluation_margin, spec.quantification) == (0.95, "tiles", 0.02, "model")
    assert (spec.tiling.overlap_px, spec.tiling.min_foreground, spec.tiling.block_tiles) == (0, 0.05, 4)


@pytest.mark.parametrize("changes, key", [
    ({"criterea": ["tiles >= 1"]}, "criterea: unknown key"),
    ({"tiling__overlap": 3}, "tiling.overlap: unknown key"),
    ({"input__pixel_size": 0.5}, "input.pixel_size: unknown key"),
    ({"format": _DELETE}, "format: missing"),
    ({"format": "mscvision.qc-spec/2"}, "format: version 2 is not supported"),
    ({"format": "something-else"}, "format: 'something-else'"),
    ({"name": _DELETE}, "name: required"),
    ({"name": 3}, "name: required"),
    ({"unit": "cells"}, "unit: 'cells'"),
    ({"confidence": 1.5}, "confidence: 1.5 must lie strictly between 0 and 1"),
    ({"confidence": 0}, "confidence: 0.0 must lie strictly between 0 and 1"),
    ({"confidence": "high"}, "confidence: 'high' is not a number"),
    ({"confidence": "1e-3"}, "write 0.001"),
    ({"evaluation_margin": -0.1}, "evaluation_margin"),
    ({"tiling": [1, 2]}, "tiling: a mapping"),
    ({"tiling__block_tiles": 0}, "tiling.block_tiles: 0 must be a whole number >= 1"),
    ({"tiling__overlap_px": 2.5}, "tiling.overlap_px: 2.5 must be a whole number"),
    ({"tiling__overlap_px": True}, "tiling.overlap_px: True must be a whole number"),
    ({"tiling__min_foreground": 1.2}, "tiling.min_foreground: 1.2 must lie in [0, 1)"),
    ({"input__pixel_size_um": -1}, "input.pixel_size_um: -1 must be a positive number"),
    ({"quantification": "missing.json"}, "quantification: 'missing.json' is not a file"),
    ({"quantification": 3}, "quantification: 3"),
    ({"criteria": []}, "criteria: a list of at least one criterion"),
    ({"criteria": "tiles >= 5"}, "criteria: a list"),
    ({"criteria": ["tiles >= 5", "fraction differentiation undifferentiated >= 0.9"]}, "criteria[1]"),
    ({"criteria": ["fraction morphology=flattened <= 1.5"]}, "criteria[0]: 'fraction morphology=flattened <= 1.5': "
                                                             "the limit 1.5 is a fraction"),
    ({"criteria": ["tiles >= 0"]}, "criteria[0]: 'tiles >= 0': the number of tiles must be a whole number >= 1"),
    ({"criteria": ["tiles >= 2.5"]}, "criteria[0]: 'tiles >= 2.5'"),
    ({"criteria": ["flagged >= 0.1"]}, "criteria[0]: 'flagged >= 0.1': flagged takes '<='"),
    ({"criteria": ["abstained <= 2"]}, "criteria[0]: 'abstained <= 2': the limit 2 is a fraction"),
    ({"criteria": [{"fraction": 0.9}]}, "criteria[0]: {'fraction': 0.9} is not a string"),
    ({"criteria": ["tiles >= 5", "tiles >= 5"]}, "criteria[1]: 'tiles >= 5' is listed twice"),
    ({"approval": {"models": [], "extra": 1}}, "approval.extra: unknown key"),
    ({"approval": {"models": [{"sha256": "00", "name": "m", "precision": "fp32", "tasks": {"t": {"classes": []}}}]}},
     "approval.models[0].sha256"),
])
def test_each_validation_message_names_its_key(tmp_path, changes, key):
    path = _write(tmp_path, _with(**changes))
    with pytest.raises(ConfigError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert str(path) in message and key in message, message


def test_an_unparseable_criterion_says_the_accepted_forms(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_spec(_write(tmp_path, _with(criteria=["undifferentiated at least 90%"])))
    assert all(form in str(caught.value) for form in CRITERION_FORMS)


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    text = "format: mscvision.qc-spec/1\nname: a\ncriteria: ['tiles >= 1']\nname: b\n"
    with pytest.raises(ConfigError, match=r"line 4: key 'name' is given twice \(first on line 2\)"):
        load_spec(_write(tmp_path, text))


def test_bad_yaml_and_a_non_mapping_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"not valid YAML \(line \d+, column \d+\)"):
        load_spec(_write(tmp_path, "format: [unclosed\n"))
    with pytest.raises(ConfigError, match="a QC spec is a YAML mapping"):
        load_spec(_write(tmp_path, "- just\n- a list\n"))
    with pytest.raises(ConfigError, match="cannot read the QC spec"):
        load_spec(tmp_path / "absent.yaml")


def test_the_criterion_grammar():
    c = parse_criterion("fraction  differentiation = undifferentiated ≥ 0.95")
    assert (c.kind, c.task, c.cls, c.op, c.limit) == ("fraction", "differentiation", "undifferentiated", ">=", 0.95)
    c = parse_criterion("tiles>=500")
    assert (c.kind, c.op, c.limit, c.limit_text) == ("tiles", ">=", 500.0, "500")
    assert parse_criterion("flagged ≤ .05").limit == 0.05
    assert parse_criterion("fraction morphology=flattened <= 0.10").met_by(0.10)
    assert not parse_criterion("fraction morphology=flattened <= 0.10").met_by(0.1001)


def test_approval_is_optional_at_load_and_validated_when_present(tmp_path):
    spec = load_spec(_write(tmp_path, _with(approval=APPROVAL)))
    assert spec.approval == APPROVAL
    assert load_spec(_write(tmp_path, _with(), "plain.yaml")).approval is None


def test_a_quantification_path_resolves_beside_the_spec(tmp_path):
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "tiles.json").write_text("{}")
    spec = load_spec(_write(tmp_path, _with(quantification="q/tiles.json")))
    assert spec.quantification == str((tmp_path / "q" / "tiles.json").resolve())


def test_the_hash_is_of_the_bytes_parsed(tmp_path):
    path = _write(tmp_path, _with())
    first = load_spec(path).sha256
    path.write_text(path.read_text() + "# a comment changes the bytes, not the meaning\n")
    assert first == hashlib.sha256(yaml.safe_dump(_with(), sort_keys=False).encode()).hexdigest()
    assert load_spec(path).sha256 != first


def test_an_unknown_task_or_class_is_named(tmp_path):
    spec = load_spec(_write(tmp_path, _with(criteria=[
        "fraction differentiation=undifferentiated >= 0.90", "fraction viability=alive >= 0.8",
        "fraction morphology=Flattened <= 0.1", "tiles >= 5"])))
    problems = spec_problems_for_model(spec, TASKS)
    assert len(problems) == 2
    assert "no task 'viability'" in problems[0]
    assert "'fraction viability=alive >= 0.8'" in problems[0] and "morphology, differentiation" in problems[0]
    assert "task 'morphology' has no class 'Flattened'" in problems[1] and "spindle, flattened, rounded" in problems[1]
