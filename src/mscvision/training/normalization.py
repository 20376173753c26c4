"""``preprocess.mean: auto`` / ``std: auto``: per-channel statistics of the training split, measured
after intensity scaling (core's ``to_unit_range``, as training sees the images) and frozen into the
spec as numbers before the model is built, so checkpoints, exported models and resumed runs carry
numbers and never re-measure. Only training images are read: validation and test stay unseen."""

from __future__ import annotations

import dataclasses

import numpy as np

from mscvision.core.errors import DataError, ImageError
from mscvision.core.preprocess import PreprocessSpec
from mscvision.training.config import RunConfig
from mscvision.training.data import load_unit_image
from mscvision.training.dataset_setup import PreparedData


def freeze_auto_normalization(config: RunConfig, data: PreparedData) -> RunConfig:
    """``config`` with every ``auto`` of ``preprocess.mean`` / ``std`` replaced by the measured numbers."""
    wanted = config.preprocess.measures
    if not wanted:
        return config
    paths = [data.manifest.paths[i] for i in data.indices("train")]
    mean, std = channel_statistics(paths, config.preprocess, config.data.skip_unreadable)
    measured = {"mean": mean, "std": std}
    frozen = {name: measured[name] for name in wanted}
    print(f"preprocess: {' and '.join(wanted)} measured on {len(paths)} training images: "
          + ", ".join(f"{name} {list(np.round(value, 4))}" for name, value in frozen.items()), flush=True)
    return dataclasses.replace(config, preprocess=dataclasses.replace(config.preprocess, **frozen))


def channel_statistics(paths: list, spec: PreprocessSpec,
                       skip_unreadable: bool = False) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and (population) standard deviation per channel over every pixel of ``paths`` after
    ``to_unit_range``; all images have the spec's size there, so each image weighs the same."""
    total = np.zeros(spec.in_channels)
    squares = np.zeros(spec.in_channels)
    pixels = 0
    for path in paths:
        try:
            x = load_unit_image(path, spec).astype(np.float64)
        except ImageError:
            if skip_unreadable:  # the image scan reports it, once, with the others
                continue
            raise
        flat = x.reshape(-1, x.shape[2])
        total += flat.sum(axis=0)
        squares += (flat ** 2).sum(axis=0)
        pixels += flat.shape[0]
    if not pixels:
        raise DataError("preprocess.mean/std: auto found no readable training image to measure. "
                        "Fix: check the training split, or give the numbers.")
    mean = total / pixels
    std = np.sqrt(np.maximum(squares / pixels - mean ** 2, 0.0))
    flat_channels = [int(c) for c in np.flatnonzero(std < 1e-6)]
    if flat_channels:
        raise DataError(f"preprocess.std: auto measured 0 for channel(s) {flat_channels} (0-based): every "
                        "training image is flat there. Fix: drop the channel with preprocess.channels, or give std.")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
