"""The model is checked against itself at load, and `verify` cannot pass vacuously (issue 13 items 5, 6).

Station-side: broken models are made from the committed fixture by rewriting its metadata in the
protobuf bytes (a few lines below, no `onnx` needed); only the external-data model needs onnx.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import onnxruntime as ort
import pytest

from conftest import REPO
from mscvision.cli import main
from mscvision.core.errors import ConfigError, ModelError
from mscvision.core.fileio import sha256_file
from mscvision.runtime.metadata import METADATA_KEY, parse_metadata
from mscvision.runtime.model import GraphPort, graph_problems, load_model, read_metadata

FIXTURE = REPO / "models" / "fixtures" / "shapes-tiny.onnx"
RAW = json.loads(ort.InferenceSession(str(FIXTURE)).get_modelmeta().custom_metadata_map[METADATA_KEY])


# --- a minimal protobuf writer: the fixture with its metadata_props (ModelProto field 14) replaced ---

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        result |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return result, pos
        shift += 7


def _delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


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
    "conformance zero": ({"conformance": {"tensor_max_abs": 1e-5, "probability_max_abs": 0}}, "conformance="),
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


def test_info_says_channel_indices_are_0_based(tmp_path, capsys):
    raw = edited(**{"preprocess.channels": [0]})
    assert main(["info", str(with_metadata(raw, tmp_path / "chan.onnx"))]) == 0
    assert "channels=[0] (0-based indices into the decoded channels)" in capsys.readouterr().out
