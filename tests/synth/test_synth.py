"""The synthetic MSC-culture generator: determinism, format, labels, bit depths, realism, preview."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mscvision.core.errors import ConfigError
from mscvision.core.imageio import decode_image
from mscvision.synth import (DIFFERENTIATION_CLASSES, MORPHOLOGY_CLASSES, generate_dataset, manifest_columns,
                             read_manifest_rows)
from mscvision.synth.cli import add_arguments, run

TASKS = {"morphology": MORPHOLOGY_CLASSES, "differentiation": DIFFERENTIATION_CLASSES}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "a"
    generate_dataset(out, n=40, seed=3)
    return out


def test_same_seed_is_byte_identical_and_worker_count_does_not_matter(small, tmp_path):
    generate_dataset(tmp_path / "b", n=40, seed=3, workers=2)
    assert _files(small) == _files(tmp_path / "b")


def test_different_seed_gives_different_images(small, tmp_path):
    generate_dataset(tmp_path / "c", n=4, seed=4)
    assert (small / "images/img_000000.png").read_bytes() != (tmp_path / "c/images/img_000000.png").read_bytes()


def test_manifest_columns_labels_and_fractions(small):
    rows = read_manifest_rows(small / "manifest.csv")
    assert list(rows[0]) == manifest_columns() and len(rows) == 40
    for row in rows:
        assert (small / row["path"]).is_file() and row["group"].startswith("donor")
        for task, classes in TASKS.items():
            fractions = np.array([float(row[f"{task}.fraction.{c}"]) for c in classes])
            assert row[task] in classes
            assert fractions.sum() == pytest.approx(1.0, abs=1e-4)
            assert classes[int(np.argmax(fractions))] == row[task]  # the label is the majority state
    for task, classes in TASKS.items():  # every class is generated
        assert {r[task] for r in rows} == set(classes)
    assert len({r["group"] for r in rows}) == 8


def test_every_morphology_meets_several_differentiation_states(tmp_path):
    from mscvision.synth.labels import plan_labels

    plan = plan_labels(2400, seed=0)
    for m in range(len(MORPHOLOGY_CLASSES)):
        assert len({d for _, mm, d in plan if mm == m}) == len(DIFFERENTIATION_CLASSES)
    for donor in range(24):  # each donor shows every class of both tasks
        mine = [(m, d) for g, m, d in plan if g == donor]
        assert {m for m, _ in mine} == {0, 1, 2} and {d for _, d in mine} == {0, 1, 2, 3}


def test_synth_json_records_the_parameters(small):
    meta = json.loads((small / "synth.json").read_text())
    assert meta["seed"] == 3 and meta["n"] == 40 and meta["modality"] == "phase"
    assert meta["bit_depth"] == 8 and meta["size"] == 128 and meta["generator_version"]


def test_16_bit_uses_more_than_8_bits(tmp_path):
    generate_dataset(tmp_path, n=3, seed=0, bit_depth=16)
    for row in read_manifest_rows(tmp_path / "manifest.csv"):
        image = decode_image(tmp_path / row["path"])
        assert image.array.dtype == np.uint16 and image.bit_depth == 16
        assert image.array.max() > 1023 and np.unique(image.array).size > 256


def test_fluorescence_has_two_channels(tmp_path):
    generate_dataset(tmp_path, n=2, seed=0, modality="fluorescence", size=96)
    for row in read_manifest_rows(tmp_path / "manifest.csv"):
        assert row["path"].endswith(".tif")
        image = decode_image(tmp_path / row["path"])
        assert image.array.shape == (96, 96, 2) and image.array.dtype == np.uint8
        assert all(image.array[:, :, c].std() > 1 for c in range(2))


def test_whole_field_mode_writes_one_large_image_with_fractions(tmp_path):
    generate_dataset(tmp_path, n=1, seed=0, field_size=384)
    (row,) = read_manifest_rows(tmp_path / "manifest.csv")
    assert decode_image(tmp_path / row["path"]).array.shape == (384, 384, 1)
    assert sum(float(row[f"morphology.fraction.{c}"]) for c in MORPHOLOGY_CLASSES) == pytest.approx(1, abs=1e-4)


def test_no_manifest_when_generation_fails(tmp_path, monkeypatch):
    import mscvision.synth.dataset as dataset

    generate_dataset(tmp_path, n=2, seed=0)

    def boom(job):
        raise RuntimeError("disk full")

    monkeypatch.setattr(dataset, "render_one", boom)
    with pytest.raises(RuntimeError):
        generate_dataset(tmp_path, n=2, seed=1)
    assert not (tmp_path / "manifest.csv").exists()  # a half-generated folder never looks complete


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"modality": "brightfield"}, {"bit_depth": 12}, {"size": 8},
                                    {"workers": 0}, {"field_size": 10}])
def test_bad_arguments_raise_config_error(tmp_path, kwargs):
    with pytest.raises(ConfigError):
        generate_dataset(tmp_path, **{"n": 2, **kwargs})


def test_intensity_statistics_do_not_reveal_the_class(tmp_path):
    pytest.importorskip("sklearn")
    from mscvision.training.realism import evaluate, intensity_features

    generate_dataset(tmp_path, n=320, seed=11)
    rows = read_manifest_rows(tmp_path / "manifest.csv")
    features = np.array([intensity_features(decode_image(tmp_path / r["path"]).array, 255) for r in rows])
    groups = np.array([r["group"] for r in rows])
    for task, classes in TASKS.items():
        labels = np.array([classes.index(r[task]) for r in rows])
        score = evaluate(features, labels, groups)  # balanced accuracy on held-out donors
        assert score <= 1 / len(classes) + 0.15 + 0.05, (task, score)


def test_preview_and_cli(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["--preview", str(tmp_path / "p.png"), "--seed", "1"])) == 0
    montage = decode_image(tmp_path / "p.png").array
    assert montage.shape[2] == 1 and montage.shape[0] > 7 * 128  # phase montage: one grey channel
    assert run(parser.parse_args(["--out", str(tmp_path / "d"), "--n", "2"])) == 0
    assert (tmp_path / "d/manifest.csv").is_file()
    with pytest.raises(ConfigError):
        run(parser.parse_args([]))


def test_synth_imports_no_training_stack():
    code = ("import sys, importlib, pkgutil, mscvision.synth as s\n"
            "for m in pkgutil.iter_modules(s.__path__): importlib.import_module('mscvision.synth.' + m.name)\n"
            "bad = [m for m in ('torch', 'lightning', 'albumentations', 'sklearn') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_realism_baselines_scale_like_the_preprocessing_even_when_nearly_flat():
    # one normaliser: the baseline's "normalised" statistics are core's percentile scaling, which
    # stretches any non-zero span to [0, 1] (the removed copy divided by max(span, 1e-6) instead)
    from mscvision.core.preprocess import percentile_normalize
    from mscvision.training.realism import _stats, intensity_features

    rng = np.random.default_rng(3)
    for image in (rng.random((16, 16)), 0.4 + rng.random((16, 16)) * 4e-7, np.full((16, 16), 0.3)):
        expected = _stats(percentile_normalize(image[:, :, None], 1.0, 99.8)[:, :, 0])
        assert np.allclose(intensity_features(image, 1.0)[len(expected):], expected)
