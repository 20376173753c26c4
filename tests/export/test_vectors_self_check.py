"""Export's check of the vectors it writes is `runtime.verify.verify_model` itself (one pass rule),
and the unfused int8 reference session is built from the hashed bytes. On the committed fixture."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")  # mscvision.export imports the training stack

from conftest import REPO  # noqa: E402
from mscvision.export import vectors as export_vectors  # noqa: E402
from mscvision.runtime.model import load_model  # noqa: E402
from mscvision.runtime.verify import default_vectors_dir  # noqa: E402

FIXTURE = REPO / "models" / "fixtures" / "shapes-tiny.onnx"


def _candidates() -> list[str]:
    cases = json.loads((default_vectors_dir(FIXTURE) / "vectors.json").read_text())["cases"]
    return [str(default_vectors_dir(FIXTURE) / c["image"]) for c in cases]


def test_written_vectors_pass_verify_and_say_so(tmp_path):
    check = export_vectors.write_vectors(FIXTURE, tmp_path / "v", _candidates())
    doc = json.loads((tmp_path / "v" / "vectors.json").read_text())
    assert check == doc["self_check"] and check["passed"] and check["failures"] == []
    assert check["n_cases"] == len(doc["cases"]) == load_model(FIXTURE).metadata.raw["conformance"]["min_cases"]


@pytest.mark.parametrize("candidates, why", [(0, "no cases"), (1, "the model asks for at least 8")])
def test_too_few_vectors_fail_the_self_check(tmp_path, candidates, why):
    """The old self_check passed on zero cases (and on one); verify's rule does not."""
    check = export_vectors.write_vectors(FIXTURE, tmp_path / "v", _candidates()[:candidates])
    assert not check["passed"] and any(why in f for f in check["failures"])
    assert not hasattr(export_vectors, "self_check")  # one copy of the pass rule: verify's


def test_unfused_session_is_built_from_the_hashed_bytes(tmp_path, monkeypatch):
    import hashlib

    import onnxruntime as ort

    model = load_model(FIXTURE, threads=1)
    seen, real = [], ort.InferenceSession

    def spy(source, *args, **kwargs):
        seen.append(source)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    export_vectors._unfused(model)
    assert len(seen) == 1 and isinstance(seen[0], bytes) and hashlib.sha256(seen[0]).hexdigest() == model.sha256
    copy = tmp_path / "m.onnx"
    copy.write_bytes(FIXTURE.read_bytes())
    moved = load_model(copy, threads=1)
    copy.write_bytes(FIXTURE.read_bytes() + b"\0")  # replaced after load: its vectors would describe another file
    with pytest.raises(RuntimeError, match="changed while its vectors were being written"):
        export_vectors._unfused(moved)
