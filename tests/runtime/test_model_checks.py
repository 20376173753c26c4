"""The model is checked against itself at load, and `verify` cannot pass vacuously (issue 13 items 5, 6).

Station-side: broken models are made from the committed fixture by rewriting its metadata in the
protobuf bytes (a few lines below, no `onnx` needed); only the external-data model needs onnx.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from conftest import REPO
from mscvision.cli import main
from mscvision.core.errors import ConfigError, ModelError
from mscvision.core.fileio import sha256_file
from mscvision.runtime.metadata import METADATA_KEY, parse_metadata
from mscvision.runtime.model import GraphPort, graph_problems, load_model, read_metadata
from mscvision.runtime.verify import inside, verify_model
from runtime_fixtures import protobuf_field as _delimited, vectors  # noqa: F401 (vectors: a pytest fixture)

FIXTURE = REPO / "models" / "fixtures" / "shapes-tiny.onnx"
RAW = json.loads(ort.InferenceSession(str(FIXTURE)).get_modelmeta().custom_metadata_map[METADATA_KEY])


# --- a minimal protobuf writer: the fixture with its metadata_props (ModelProto field 14) replaced ---

def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        result |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return result, pos
        shift += 7


def _without_field(data: bytes, drop: int) -> bytes:
    kept, pos = bytearray(), 0
    while pos < len(data):
        start = pos
        key, pos = _read_varint(data, pos)
        wire = key & 7
        if wire == 0:
            _, pos = _read_varint(data, pos)
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            pos += length
        else:
            pos += 8 if wire == 1 else 4
        if key >> 3 != drop:
            kept += data[start:pos]
    return bytes(kept)


def with_metadata(raw: dict, path: Path, source: Path = FIXTURE) -> Path:
    entry = _delimited(1, METADATA_KEY.encode()) + _delimited(2, json.dumps(raw).encode())
    path.write_bytes(_without_field(source.read_bytes(), 14) + _delimited(14, entry))
    return path


def edited(**changes) -> dict:
    """The fixture's metadata with dotted keys replaced, e.g. ``edited(**{"input.max_image_side": 0})``."""
    raw = copy.deepcopy(RAW)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value
    return raw


# --- item 5: the model checked against itself ---

def test_rewritten_fixture_is_still_a_good_model(tmp_path):
    model = load_model(with_metadata(RAW, tmp_path / "same.onnx"), threads=1)
    assert model.metadata.raw == RAW


def test_read_metadata_builds_no_session(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("read_metadata built an InferenceSession")

    monkeypatch.setattr(ort, "InferenceSession", refuse)
    assert read_metadata(FIXTURE).raw == RAW
    assert main(["info", str(FIXTURE)]) == 0


def test_session_is_built_from_the_hashed_bytes(monkeypatch):
    seen = []
    real = ort.InferenceSession

    def spy(source, *args, **kwargs):
        seen.append(source)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    model = load_model(FIXTURE, threads=1)
    assert len(seen) == 1 and isinstance(seen[0], bytes)
    assert model.sha256 == hashlib.sha256(seen[0]).hexdigest() == sha256_file(FIXTURE)


def test_expect_sha256(tmp_path, capsys):
    good = sha256_file(FIXTURE)
    assert load_model(FIXTURE, threads=1, expect_sha256=good.upper()).sha256 == good
    other = with_metadata(edited(name="other"), tmp_path / "other.onnx")
    with pytest.raises(ModelError, match=f"SHA-256 {sha256_file(other)} is not the expected {good}"):
        load_model(other, threads=1, expect_sha256=good)
    with pytest.raises(ConfigError, match="64 hex digits"):
        load_model(FIXTURE, expect_sha256="efda59")
    assert main(["verify", str(other), "--expect-sha256", good]) == 2
    assert main(["info", str(other), "--expect-sha256", good]) == 2
    assert "is not the expected" in capsys.readouterr().err
    assert main(["info", str(FIXTURE), "--expect-sha256", good]) == 0


BAD_METADATA = {
    "duplicate class": ({"tasks.0.classes": ["bar", "bar"]}, "class(es) ['bar'] more than once"),
    "duplicate task": ({"tasks.1.name": "shape"}, "task name 'shape' appears 2 times"),
    "one class": ({"tasks.0.classes": ["bar"]}, "at least 2 non-empty strings"),
    "threshold above 1": ({"tasks.0.threshold": 1.5}, "threshold 1.5 is not in"),
    "threshold NaN": ({"tasks.0.threshold": float("nan")}, "threshold nan is not in"),
    "temperature 0": ({"tasks.1.temperature": 0}, "temperature 0.0 is not a finite number > 0"),
    "temperature inf": ({"tasks.1.temperature": float("inf")}, "temperature inf is not"),
    "std 0": ({"preprocess.std": [0.0]}, "std=[0.0] must be finite numbers > 0"),
    "mean NaN": ({"preprocess.mean": [float("nan")]}, "mean=[nan] must be finite"),
    "negative channel": ({"preprocess.channels": [-1]}, "0-based indices >= 0"),
    "pixel size 0": ({"preprocess.pixel_size_um": -0.5}, "pixel_size_um=-0.5 must be"),
    "max side 0": ({"input.max_image_side": 0}, "max_image_side=0 must be"),
    "max side huge": ({"input.max_image_side": 10**6}, "max_image_side=1000000 must be"),
    "max side text": ({"input.max_image_side": "64"}, "max_image_side='64' must be"),
    "max side below input": ({"input.max_image_side": 16}, "from the model's input side (32)"),
    "conformance zero": ({"conformance": {"tensor_max_abs": 1e-5, "probability_max_abs": 0}},
                         "conformance.probability_max_abs=0 must be a finite number in (0, 0.05]"),
    "conformance tensor loose": ({"conformance.tensor_max_abs": 0.01}, "conformance.tensor_max_abs=0.01 must be"),
    "conformance probability loose": ({"conformance.probability_max_abs": 0.5}, "probability_max_abs=0.5 must be"),
    "conformance min_cases 0": ({"conformance.min_cases": 0}, "conformance.min_cases=0 must be an integer >= 1"),
    "classes a string": ({"tasks.0.classes": "bd"}, "classes is str 'bd', not a list"),
    "tasks an object": ({"tasks": {"shape": {}}}, "tasks is dict"),
}


@pytest.mark.parametrize("case", sorted(BAD_METADATA))
def test_inconsistent_metadata_is_refused(case):
    changes, message = BAD_METADATA[case]
    with pytest.raises(ModelError, match="metadata is inconsistent") as info:
        parse_metadata(json.dumps(edited(**changes)), "m.onnx")
    assert message in str(info.value)


def test_class_count_against_graph_is_refused_at_load(tmp_path):
    model = with_metadata(edited(**{"tasks.0.classes": ["bar", "disc", "ring"]}), tmp_path / "three.onnx")
    with pytest.raises(ModelError, match=r"'probabilities.shape' is tensor\(float\)\['batch', 2\], but task "
                                         r"'shape' lists 3 classes"):
        load_model(model, threads=1)


def test_input_dims_against_graph_are_refused_at_load(tmp_path):
    raw = edited(**{"preprocess.size": [16, 16], "input.height": 16, "input.width": 16, "input.max_image_side": 32})
    with pytest.raises(ModelError, match=r"input 'input' has dims \['batch', 1, 32, 32\], the metadata says \(N, 1, 16, 16\)"):
        load_model(with_metadata(raw, tmp_path / "small.onnx"), threads=1)


def test_graph_problems_need_static_widths():
    metadata = parse_metadata(json.dumps(RAW))
    good_in = {"input": GraphPort("input", "tensor(float)", ("batch", 1, 32, 32))}
    outs = {f"probabilities.{t}": GraphPort(f"probabilities.{t}", "tensor(float)", ("batch", 2)) for t in ("shape", "count")}
    assert graph_problems(metadata, good_in, outs) == []
    dynamic = {**outs, "probabilities.count": GraphPort("probabilities.count", "tensor(float)", ("batch", "k"))}
    assert "'probabilities.count' is tensor(float)['batch', 'k']" in graph_problems(metadata, good_in, dynamic)[0]
    wide_in = {"input": GraphPort("input", "tensor(float)", ("batch", 1, "h", "w"))}
    assert "has dims" in graph_problems(metadata, wide_in, outs)[0]
    assert graph_problems(metadata, {}, {})[0] == "no float32 input named 'input'"


def test_duplicate_metadata_entries_are_refused(tmp_path):
    entry = _delimited(1, METADATA_KEY.encode()) + _delimited(2, json.dumps(RAW).encode())
    path = tmp_path / "twice.onnx"
    path.write_bytes(FIXTURE.read_bytes() + _delimited(14, entry))
    with pytest.raises(ModelError, match="appears more than once"):
        read_metadata(path)


def test_not_an_onnx_file_is_a_clear_refusal(tmp_path):
    with pytest.raises(ModelError, match="not a regular file"):
        load_model(tmp_path)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff" * 40)
    with pytest.raises(ModelError, match="not a readable ONNX file"):
        load_model(junk)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(FIXTURE.read_bytes()[:5000])
    with pytest.raises(ModelError, match="truncated|not a readable ONNX"):
        load_model(truncated)


def test_external_data_is_refused(tmp_path):
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(FIXTURE))
    path = tmp_path / "split.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="split.onnx.data", size_threshold=0)
    assert (tmp_path / "split.onnx.data").is_file()  # the side file is there: it must still be refused
    with pytest.raises(ModelError, match="external side file"):
        load_model(path, threads=1)
    with pytest.raises(ModelError, match="external side file"):
        read_metadata(path)


# --- item 6: verify cannot pass vacuously ---

@pytest.fixture(scope="module")
def model():
    return load_model(FIXTURE, threads=1)


def _edit_doc(folder: Path, edit) -> None:
    doc = json.loads((folder / "vectors.json").read_text())
    edit(doc)
    (folder / "vectors.json").write_text(json.dumps(doc))


def _verify(model, folder):
    report = verify_model(model, folder)
    return report.passed, " | ".join(report.failures)


def test_untouched_vectors_pass(model, vectors):
    assert _verify(model, vectors) == (True, "")


def test_zero_cases_fail(model, vectors, capsys):
    _edit_doc(vectors, lambda d: d.update(cases=[]))
    passed, failures = _verify(model, vectors)
    assert not passed and "no cases" in failures
    assert main(["verify", str(FIXTURE), str(vectors)]) == 3
    assert "verify: FAIL" in capsys.readouterr().err


def test_labels_are_compared(model, vectors):
    _edit_doc(vectors, lambda d: d["cases"][0]["labels"].update(shape="disc"))  # probabilities say bar
    passed, failures = _verify(model, vectors)
    assert not passed and "shape: label bar != recorded label disc" in failures


def test_tolerances_come_from_the_model_not_the_vectors_file(model, vectors, tmp_path, capsys):
    def loosen_and_nudge(doc):
        doc["tolerances"] = {"tensor_max_abs": 1.0, "probability_max_abs": 1.0, "top1": "must match"}
        p = doc["cases"][0]["probabilities"]["shape"]
        doc["cases"][0]["probabilities"]["shape"] = [p[0] + 0.01, p[1] - 0.01]

    _edit_doc(vectors, loosen_and_nudge)
    passed, failures = _verify(model, vectors)
    assert not passed and "probabilities differ by 1.00e-02 > 1e-04" in failures
    assert main(["verify", str(FIXTURE), str(vectors)]) == 3
    out = capsys.readouterr().out
    assert "note: vectors.json states looser tolerances" in out and "probability 1e-04 (from the model's metadata)" in out

    # a model that states its own, looser tolerance in its metadata: that one applies
    stated = with_metadata(edited(conformance={"tensor_max_abs": 1e-5, "probability_max_abs": 0.05}),
                           tmp_path / "stated.onnx")
    _edit_doc(vectors, lambda d: d.update(model_sha256=sha256_file(stated)))
    assert _verify(load_model(stated, threads=1), vectors) == (True, "")
    assert main(["verify", str(stated), str(vectors)]) == 0
    assert "probability 5e-02 (from the model's metadata)" in capsys.readouterr().out


def test_truncated_tensor_fails_that_case_only(model, vectors):
    doc = json.loads((vectors / "vectors.json").read_text())
    tensor = vectors / doc["cases"][1]["tensor"]
    tensor.write_bytes(tensor.read_bytes()[:-4])
    report = verify_model(model, vectors)
    assert not report.passed and len(report.failures) == 1
    assert "holds 4092 bytes; shape [1, 32, 32] float32 needs 4096" in report.failures[0]
    assert [line[:4] for line in report.lines] == ["ok  ", "FAIL"] + ["ok  "] * (len(doc["cases"]) - 2)


def test_nan_in_expected_tensor_fails(model, vectors):
    doc = json.loads((vectors / "vectors.json").read_text())
    tensor = vectors / doc["cases"][0]["tensor"]
    values = np.fromfile(tensor, "<f4")
    values[3] = np.nan
    values.tofile(tensor)
    passed, failures = _verify(model, vectors)
    assert not passed and "NaN or Inf" in failures


@pytest.mark.parametrize("text", ["{not json", "[]", json.dumps({"format": "mscvision.vectors", "version": 1})])
def test_malformed_vectors_json_fails_clearly(model, vectors, capsys, text):
    (vectors / "vectors.json").write_text(text)
    passed, failures = _verify(model, vectors)
    assert not passed and "vectors.json" in failures
    assert main(["verify", str(FIXTURE), str(vectors)]) == 3
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("labels"), "'labels' is missing"),
    (lambda c: c.update(shape="1,32,32"), "'shape' is missing or not a list"),
    (lambda c: c.update(shape=[1, 16, 16]), "is not the model's input"),
    (lambda c: c["probabilities"].update(count=[0.5]), "probabilities.count is not a list of 2 numbers"),
    (lambda c: c["labels"].update(count="three"), "labels.count 'three' is not one of"),
    (lambda c: c.update(image="gone.png"), "no such file"),
])
def test_malformed_case_fails_that_case(model, vectors, edit, message):
    _edit_doc(vectors, lambda d: edit(d["cases"][2]))
    report = verify_model(model, vectors)
    assert not report.passed and len(report.failures) == 1 and message in report.failures[0]


@pytest.mark.parametrize("name", ["../outside.png", "/etc/hostname", "sub/../../outside.png", "link.png"])
def test_paths_outside_the_vectors_folder_are_refused(model, vectors, name):
    shutil.copy(vectors / "00_img007.png", vectors.parent / "outside.png")
    os.symlink(vectors.parent / "outside.png", vectors / "link.png")
    _edit_doc(vectors, lambda d: d["cases"][0].update(image=name))
    passed, failures = _verify(model, vectors)
    assert not passed and "outside the vectors folder" in failures


def test_inside_accepts_plain_names(vectors):
    assert inside(vectors, "00_img007.png") == vectors / "00_img007.png"


def test_info_says_channel_indices_are_0_based(tmp_path, capsys):
    raw = edited(**{"preprocess.channels": [0]})
    assert main(["info", str(with_metadata(raw, tmp_path / "chan.onnx"))]) == 0
    assert "channels=[0] (0-based indices into the decoded channels)" in capsys.readouterr().out
