"""scripts/ood_sources.py (issue 16): every source in the model's input format (size, dtype, channels),
labels kept where there are labels, and readable by `evaluate --ood` as the kind it is."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, make_shapes_dataset
from mscvision.core.imageio import decode_image
from mscvision.runtime.metadata import parse_metadata
from mscvision.runtime.model import read_metadata
from mscvision.runtime.ood_evaluation import load_ood_source
from runtime_fixtures import FIXTURE
from test_model_checks import edited

_spec = importlib.util.spec_from_file_location("ood_sources", REPO / "scripts" / "ood_sources.py")
ood_sources = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ood_sources)

SHIFTS = ",".join(ood_sources.SHIFTS)


def rows(manifest: Path) -> list[dict]:
    with open(manifest, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def images(folder: Path) -> list[np.ndarray]:
    return [decode_image(p).array for p in sorted((folder / "images").iterdir())]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "shapes", n=8, size=32, groups=4, seed=2)


@pytest.fixture(scope="module")
def written(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sources")
    assert ood_sources.main([str(FIXTURE), "--out", str(out), "--data", str(data), "--n", "5",
                             "--only", f"{SHIFTS},synth,blank,saturated,noise"]) == 0
    return out


def test_each_shift_keeps_size_dtype_labels_and_groups(data, written):
    originals = {r["path"]: decode_image(data.parent / r["path"]).array for r in rows(data)}
    for name in ood_sources.SHIFTS:
        manifest = written / name / "manifest.csv"
        got = rows(manifest)
        assert [{k: r[k] for k in ("shape", "count", "group")} for r in got] == \
               [{k: r[k] for k in ("shape", "count", "group")} for r in rows(data)], name
        for row, original in zip(got, originals.values()):
            x = decode_image(manifest.parent / row["path"]).array
            assert x.shape == original.shape and x.dtype == original.dtype == np.uint8, name
        changed = [not np.array_equal(decode_image(manifest.parent / r["path"]).array, o)
                   for r, o in zip(got, originals.values())]
        assert all(changed), name
        source = load_ood_source(name, manifest.parent, read_metadata(FIXTURE).tasks)
        assert source.kind == "manifest" and set(source.labels) == {"shape", "count"}


def test_blur_and_gamma_do_what_they_say(data, written):
    first = decode_image(data.parent / rows(data)[0]["path"]).array.astype(float)
    blur3 = images(written / "blur3")[0].astype(float)
    dark = images(written / "gamma2")[0].astype(float)
    assert np.abs(np.diff(blur3, axis=1)).mean() < np.abs(np.diff(first, axis=1)).mean()  # smoother
    assert dark.mean() < first.mean() and images(written / "gamma0.5")[0].mean() > first.mean()


def test_far_sources_are_crops_in_the_models_format(written):
    for name in ("synth", "blank", "saturated", "noise"):
        frames = images(written / name)
        assert len(frames) == 5 and not (written / name / "manifest.csv").exists(), name
        assert all(x.shape == (32, 32, 1) and x.dtype == np.uint8 for x in frames), name
        source = load_ood_source(name, written / name, read_metadata(FIXTURE).tasks)
        assert source.kind == "folder" and not source.labels and len(source.paths) == 5
    assert all((x == 255).all() for x in images(written / "saturated"))
    assert all(x.std() > 1 for x in images(written / "synth"))  # cells, not an empty field
    record = json.loads((written / "sources.json").read_text())
    assert record["format"] == {"file_channels": 1, "bit_depth": 8, "full_scale": 255.0, "crop_size": [32, 32]}
    assert record["sources"]["blur1"]["labelled"] and not record["sources"]["noise"]["labelled"]
    assert not list(written.glob(".*partial*"))  # every temporary folder renamed or removed


def test_photos_are_grey_crops_of_skimage_data(tmp_path):
    pytest.importorskip("skimage")
    assert ood_sources.main([str(FIXTURE), "--out", str(tmp_path), "--only", "photos", "--n", "12"]) == 0
    frames = images(tmp_path / "photos")
    assert len(frames) == 12 and all(x.shape == (32, 32, 1) and x.dtype == np.uint8 for x in frames)


def test_held_out_classes_are_copied_with_their_labels(data, tmp_path):
    assert ood_sources.main([str(FIXTURE), "--out", str(tmp_path), "--near", str(data), "--classes", "disc",
                             "--only", "held_out"]) == 0
    got = rows(tmp_path / "held_out" / "manifest.csv")
    discs = [r for r in rows(data) if r["shape"] == "disc"]
    assert len(got) == len(discs) == 4 and {r["shape"] for r in got} == {"disc"}
    for row, original in zip(got, discs):
        assert (tmp_path / "held_out" / row["path"]).read_bytes() == (data.parent / original["path"]).read_bytes()


def test_the_format_follows_the_models_channels_and_bit_depth():
    raw = edited(**{"input.training_bit_depths": [16], "preprocess.channels": [0, 2],
                    "preprocess.in_channels": 2, "input.channels": 2, "preprocess.mean": [0.5, 0.5],
                    "preprocess.std": [0.25, 0.25]})
    raw["ood"] = {"image_checks": {"reference": {"full_scale": {"16": 4095.0}}}}
    fmt = ood_sources.Format(parse_metadata(json.dumps(raw)), None, None)
    assert (fmt.file_channels, fmt.bit_depth, fmt.top, fmt.size) == (3, 16, 4095.0, (32, 32))
    frame = fmt.frame(np.ones((32, 32)))
    assert frame.shape == (32, 32, 3) and frame.dtype == np.uint16 and frame.max() == 4095


@pytest.mark.parametrize("argv, says", [
    (["--only", "blur1"], "needs --data"),
    (["--near", "x.csv"], "--near needs --classes"),
    (["--only", "fog"], "no such source"),
])
def test_usage_errors(tmp_path, capsys, argv, says):
    assert ood_sources.main([str(FIXTURE), "--out", str(tmp_path), *argv]) == 2
    assert says in capsys.readouterr().err


def test_an_existing_source_is_not_replaced_without_overwrite(tmp_path, capsys):
    (tmp_path / "blank").mkdir()
    assert ood_sources.main([str(FIXTURE), "--out", str(tmp_path), "--only", "blank", "--n", "2"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert ood_sources.main([str(FIXTURE), "--out", str(tmp_path), "--only", "blank", "--n", "2", "--overwrite"]) == 0
    assert len(images(tmp_path / "blank")) == 2
