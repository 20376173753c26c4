"""The torch-free runtime on the committed model fixture (models/fixtures/shapes-tiny.onnx).

Runs in the bare station install (numpy, Pillow, tifffile, onnxruntime, pytest): the one test that
needs the training stack skips itself when torch is absent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import make_shapes_dataset
from mscvision.cli import main
from mscvision.core.decisions import REVIEW, decide
from mscvision.core.errors import ModelError
from mscvision.core.fileio import sha256_file
from mscvision.core.imageio import write_image
from mscvision.runtime.inputs import collect_inputs, load_input
from mscvision.runtime.metadata import FORMAT_VERSION, parse_metadata
from mscvision.runtime.verify import default_vectors_dir
from runtime_fixtures import FIXTURE, images, model  # noqa: F401 (fixtures)


def _rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_fixture_loads_with_its_metadata_and_hash(model):
    assert [t.name for t in model.metadata.tasks] == ["shape", "count"]
    assert model.metadata.tasks[0].classes == ("bar", "disc")
    assert model.metadata.raw["temperature_applied_in_graph"] is True
    assert model.metadata.raw["model_card"]["known_limits"]
    assert model.sha256 == sha256_file(FIXTURE)
    assert not FIXTURE.with_name(FIXTURE.name + ".data").exists()


@pytest.mark.parametrize("batch", [1, 2, 7])
def test_dynamic_batch(model, images, batch):
    paths = sorted(str(p) for p in images.glob("*.png"))
    x = np.stack([load_input(paths[i % len(paths)], model.metadata) for i in range(batch)])
    probs = model.predict(x)
    single = model.predict(x[:1])
    for task in model.metadata.tasks:
        assert probs[task.name].shape == (batch, len(task.classes))
        np.testing.assert_allclose(probs[task.name].sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(probs[task.name][0], single[task.name][0], atol=1e-6)


def test_metadata_of_unknown_version_or_missing_is_refused(model):
    raw = dict(model.metadata.raw, format_version=FORMAT_VERSION + 1)
    with pytest.raises(ModelError, match=f"format version {FORMAT_VERSION + 1}"):
        parse_metadata(json.dumps(raw))
    with pytest.raises(ModelError, match="not an mscvision model"):
        parse_metadata(None)
    broken = dict(model.metadata.raw, tasks=[{"name": "shape"}])
    with pytest.raises(ModelError, match="malformed"):
        parse_metadata(json.dumps(broken))


def test_predict_folder_with_bad_files(images, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(images, folder)
    good = sorted(p.name for p in folder.glob("*.png"))
    (folder / "corrupt.png").write_bytes((folder / good[0]).read_bytes()[:60])
    (folder / "notes.png").write_text("not an image\n")
    rgb = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    write_image(folder / "colour.png", rgb)  # three different channels for a one-channel model
    (folder / "readme.txt").write_text("ignored: not an image suffix\n")
    out = tmp_path / "pred.csv"

    assert main(["predict", str(FIXTURE), str(folder), "--out", str(out), "--batch-size", "4",
                 "--threads", "1"]) == 3
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert set(rows) == {*good, "corrupt.png", "notes.png", "colour.png"}
    for name in good:
        assert rows[name]["status"] == "ok" and rows[name]["reason"] == ""
        assert rows[name]["shape.label"] in ("bar", "disc")
        assert abs(float(rows[name]["count.p.one"]) + float(rows[name]["count.p.two"]) - 1) < 1e-4
    for name in ("corrupt.png", "notes.png"):
        assert rows[name]["status"] == "error" and "cannot be decoded" in rows[name]["reason"]
    assert rows["colour.png"]["status"] == "error" and "3 channel(s)" in rows["colour.png"]["reason"]
    assert rows["colour.png"]["shape.label"] == ""
    assert list(_rows(out)[0]) == ["path", "status", "reason", "shape.label", "shape.p.bar", "shape.p.disc",
                                   "count.label", "count.p.one", "count.p.two", "gate", "gate.p",
                                   "notes"]  # gate (issue 16) added before notes, which stays last
    assert {rows[name]["gate"] for name in good} == {"none"}  # the fixture predates the OOD gate


def test_predict_jsonl_and_exit_code_zero(images, tmp_path, capsys):
    out = tmp_path / "pred.jsonl"
    assert main(["predict", str(FIXTURE), str(images / "*.png"), "--out", str(out), "--threads", "1"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 6 and {r["status"] for r in records} == {"ok"}
    assert isinstance(records[0]["shape.p.bar"], float)
    assert "6 images (6 ok, 0 review, 0 error)" in capsys.readouterr().err
    assert not list(tmp_path.glob(".pred*"))  # the atomic write left no temporary file


def test_too_large_image_is_refused_not_shrunk(model, tmp_path):
    big = tmp_path / "field.png"
    write_image(big, np.random.default_rng(0).integers(0, 255, (400, 400), dtype=np.uint8))
    out = tmp_path / "pred.csv"
    assert main(["predict", str(FIXTURE), str(big), "--out", str(out)]) == 3
    row = _rows(out)[0]
    assert row["status"] == "error" and "mscvision qc" in row["reason"] and "400x400" in row["reason"]


def test_missing_input_becomes_an_error_row(tmp_path):
    out = tmp_path / "pred.csv"
    assert main(["predict", str(FIXTURE), str(tmp_path / "gone.png"), "--out", str(out)]) == 3
    assert "no such file" in _rows(out)[0]["reason"]


def test_collect_inputs(images, tmp_path):
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    shutil.copy(next(images.glob("*.png")), nested / "deep.png")
    assert collect_inputs([str(tmp_path / "a")]).paths == []
    assert [Path(p).name for p in collect_inputs([str(tmp_path / "a")], recursive=True)] == ["deep.png"]
    assert len(collect_inputs([str(images / "img00*.png"), str(images)])) == 6  # repeats dropped


def test_decision_threshold_gives_review():
    assert decide(np.array([0.2, 0.8]), ("a", "b"), 0.5).label == "b"
    review = decide(np.array([0.45, 0.55]), ("a", "b"), 0.6)
    assert review.label == REVIEW and review.abstained and review.index == 1


def test_info_prints_metadata_and_model_card(capsys):
    assert main(["info", str(FIXTURE)]) == 0
    text = capsys.readouterr().out
    assert "shape: bar, disc" in text and "Known limits" in text and sha256_file(FIXTURE) in text


def test_verify_passes_on_fixture(capsys):
    assert main(["verify", str(FIXTURE), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "verify: PASS" in out and "onnxruntime" in out and "cpu flags" in out and "threads 1" in out


def test_verify_fails_on_tampered_vectors(tmp_path, capsys):
    vectors = tmp_path / "vectors"
    shutil.copytree(default_vectors_dir(FIXTURE), vectors)
    doc = json.loads((vectors / "vectors.json").read_text())
    case = doc["cases"][0]
    case["probabilities"]["shape"] = [p + d for p, d in zip(case["probabilities"]["shape"], (0.01, -0.01))]
    (vectors / "vectors.json").write_text(json.dumps(doc))
    assert main(["verify", str(FIXTURE), str(vectors)]) == 3
    assert "probabilities differ" in capsys.readouterr().err

    shutil.rmtree(vectors)
    shutil.copytree(default_vectors_dir(FIXTURE), vectors)
    tensor = vectors / doc["cases"][1]["tensor"]
    values = np.fromfile(tensor, "<f4")
    values[10] += 0.01
    values.tofile(tensor)
    assert main(["verify", str(FIXTURE), str(vectors)]) == 3
    assert "tensor differs" in capsys.readouterr().err


BLOCKED_RUN = textwrap.dedent("""
    import importlib.abc, pkgutil, sys
    BLOCKED = {"torch", "torchvision", "lightning", "albumentations", "onnx", "onnxscript"}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked import of {name}")

    sys.meta_path.insert(0, Blocker())
    import mscvision.runtime
    for info in pkgutil.walk_packages(mscvision.runtime.__path__, "mscvision.runtime."):
        __import__(info.name)
    from mscvision.cli import main
    codes = [main(["predict", sys.argv[1], sys.argv[2], "--out", sys.argv[3]]), main(["verify", sys.argv[1]])]
    print("codes", codes)
""")


def test_runtime_runs_with_torch_blocked(images, tmp_path):
    """Every runtime module imports, and predict + verify run, while torch & co. cannot be imported."""
    out = tmp_path / "pred.csv"
    result = subprocess.run([sys.executable, "-c", BLOCKED_RUN, str(FIXTURE), str(images), str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "codes [0, 0]" in result.stdout
    assert len(_rows(out)) == 6


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_runtime_tensors_equal_training_tensors(model, tmp_path, bit_depth):
    """The runtime's decode + preprocess is the training data set's, to the bit."""
    pytest.importorskip("torch")
    from mscvision.training.data import ImageSet, scan_images

    manifest = make_shapes_dataset(tmp_path / "data", n=4, size=48, bit_depth=bit_depth)
    paths = [manifest.parent / f"images/img{i:03d}.png" for i in range(4)]
    spec, targets = model.metadata.spec, {"shape": np.zeros(4, np.int64)}
    cached = scan_images(paths, spec, cache=True, skip_unreadable=False).images  # fit's evaluation path
    for dataset in (ImageSet(paths, targets, spec, augment=None),
                    ImageSet(paths, targets, spec, augment=None, cached=cached)):
        for i, path in enumerate(paths):
            training_tensor = dataset[i][0].numpy()
            assert training_tensor.dtype == np.float32
            assert np.array_equal(training_tensor, load_input(path, model.metadata))
