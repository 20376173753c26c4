"""preprocess.mean / std: auto — measured on the training split after intensity scaling, frozen as numbers."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("torch")

from conftest import tiny_overrides  # noqa: E402
from mscvision.core.errors import ConfigError  # noqa: E402
from mscvision.core.imageio import decode_image, write_image  # noqa: E402
from mscvision.core.preprocess import PreprocessSpec, to_unit_range  # noqa: E402
from mscvision.training.config import load_config  # noqa: E402
from mscvision.training.normalization import channel_statistics  # noqa: E402


def _hand_statistics(paths: list[Path], spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.concatenate([to_unit_range(decode_image(p).array, spec).reshape(-1, spec.in_channels)
                             for p in paths]).astype(np.float64)
    return pixels.mean(axis=0), pixels.std(axis=0)


def _two_channel_dataset(root: Path, n: int = 24) -> Path:
    """Two channels of different brightness and contrast, two classes, six groups."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    lines = ["path,kind,group"]
    for i in range(n):
        kind = ("dim", "bright")[i % 2]
        a = rng.normal(60 if kind == "dim" else 140, 20, (20, 24))
        b = rng.gamma(2.0, 300.0 + 50 * (i % 3), (20, 24))
        write_image(root / "images" / f"im{i:02d}.tif", np.clip(np.dstack([a, b]), 0, 65535).astype(np.uint16))
        lines.append(f"images/im{i:02d}.tif,{kind},g{i % 6}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def test_channel_statistics_equal_a_hand_computation(tmp_path):
    manifest = _two_channel_dataset(tmp_path / "two")
    paths = sorted((tmp_path / "two" / "images").glob("*.tif"))
    for intensity in ("percentile", "fixed"):
        spec = PreprocessSpec(in_channels=2, intensity=intensity, size=(16, 16))
        mean, std = channel_statistics(paths, spec)
        hand_mean, hand_std = _hand_statistics(paths, spec)
        assert np.allclose(mean, hand_mean, rtol=1e-9) and np.allclose(std, hand_std, rtol=1e-9)
    assert manifest.is_file() and len(mean) == 2 and mean[0] != pytest.approx(mean[1], abs=1e-3)


def test_auto_is_accepted_per_key_and_other_words_are_refused():
    cfg = load_config(None, ["preprocess.mean=auto"])
    assert cfg.preprocess.measures == ("mean",) and cfg.preprocess.std == (0.25,)
    with pytest.raises(ConfigError, match=r"preprocess.std='median': use one number per channel, or auto"):
        load_config(None, ["preprocess.std=median"])
    with pytest.raises(ConfigError, match=r"preprocess.mean has 2 values for 1 channels"):
        load_config(None, ["preprocess.mean=[0.1, 0.2]", "preprocess.std=auto"])


def test_a_run_freezes_the_training_split_statistics_into_its_spec(tmp_path):
    from mscvision.training.fit import train
    from mscvision.training.module import MscClassifier

    manifest = _two_channel_dataset(tmp_path / "two")
    overrides = [*tiny_overrides(manifest, tmp_path / "runs", epochs=1), "tasks={kind: {}}",
                 "preprocess.in_channels=2", "preprocess.mean=auto", "preprocess.std=auto"]
    result = train(load_config(None, overrides))
    with open(result.run_dir / "split.csv", newline="") as f:
        train_paths = [Path(row["path"]) for row in csv.DictReader(f) if row["split"] == "train"]
    spec = load_config(None, [*overrides[:-2], "preprocess.mean=null", "preprocess.std=null"]).preprocess
    hand_mean, hand_std = _hand_statistics(train_paths, spec)
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())["preprocess"]
    assert np.allclose(saved["mean"], hand_mean, rtol=1e-9) and np.allclose(saved["std"], hand_std, rtol=1e-9)
    model = MscClassifier.load_from_checkpoint(result.checkpoint, map_location="cpu")
    assert model.config.preprocess.measures == ()
    assert np.allclose(model.config.preprocess.mean, hand_mean, rtol=1e-9)
    # measured on the training split only: all rows would give other numbers
    all_mean, _ = _hand_statistics(sorted((tmp_path / "two" / "images").glob("*.tif")), spec)
    assert not np.allclose(all_mean, hand_mean, rtol=1e-6)
