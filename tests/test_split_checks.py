"""Splits that would mislead are refused, held-out figures that cannot be estimated are marked, and
the split is shown (and written) before training starts (issue 20); pooled CV skips unreadable images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import make_shapes_dataset, tiny_overrides

pytest.importorskip("torch")


def test_pooled_cross_validation_leaves_out_images_skipped_as_unreadable(tmp_path):
    """An unreadable image has no out-of-fold prediction: it must not count as a class-0 prediction."""
    from mscvision.training.config import load_config
    from mscvision.training.crossval import cross_validate

    manifest = make_shapes_dataset(tmp_path / "shapes", n=36, groups=9)
    (manifest.parent / "images" / "img003.png").write_bytes(b"not an image")  # a bar, class 1 of shape
    overrides = [*tiny_overrides(manifest, tmp_path / "runs", epochs=1), "data.val_fraction=0",
                 "trainer.select=last", "data.skip_unreadable=true"]
    report = cross_validate(load_config(None, overrides), k=3)
    for task in ("shape", "count"):
        pooled = report["pooled"][task]
        assert pooled["n"] == 35
        summed = sum(np.array(f["test"][task]["confusion_matrix"]) for f in report["folds"])
        assert np.array_equal(np.array(pooled["confusion_matrix"]), summed)
