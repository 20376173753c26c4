"""The train / val / test loaders of one run, over the images the scan found usable.

The train loader is the CPU path's DataLoader (data.ImageSet: albumentations per image in the
workers) or, with ``data.augment_on`` resolved to device, the device path's ``ResidentLoader``
(training/resident.py). Val and test are DataLoaders either way (no augmentation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from mscvision.training.augment import build_train_augment
from mscvision.training.config import RunConfig
from mscvision.training.data import ImageSet, ScanResult, build_loader, scan_images
from mscvision.training.dataset_setup import PreparedData, sample_weights
from mscvision.training.resident import ResidentLoader, augment_on, resident_train_loader


@dataclass(frozen=True)
class Loaders:
    train: DataLoader | ResidentLoader
    val: DataLoader | None  # None with data.val_fraction 0: a fixed schedule, nothing to monitor
    test: DataLoader
    train_rows: np.ndarray  # manifest rows of each loader, in loader order
    val_rows: np.ndarray
    test_rows: np.ndarray
    scan: ScanResult
    augment_on: str = "cpu"  # where the train loader augments: cpu (DataLoader) or device (ResidentLoader)

    @property
    def skipped(self) -> list[str]:
        """The images left out as unreadable, one message each."""
        return self.scan.skipped

    def loader(self, side: str) -> DataLoader | None:
        return getattr(self, side)

    def rows(self, side: str) -> np.ndarray:
        return getattr(self, f"{side}_rows")


def build_loaders(config: RunConfig, data: PreparedData, cuda: bool = False) -> Loaders:
    """``cuda``: the run trains on CUDA (what ``data.augment_on: auto`` decides by)."""
    spec = config.preprocess
    scan = scan_images(data.manifest.paths, spec, config.data.cache_images, config.data.skip_unreadable)
    for message in scan.skipped:
        print(f"warning: skipped {message}", flush=True)
    rows = {side: np.intersect1d(data.indices(side), scan.keep) for side in ("train", "val", "test")}
    loaders = {side: _side_loader(config, data, scan, side, rows[side]) for side in ("val", "test")}
    where = augment_on(config, cuda, len(rows["train"]))
    train = (device_train_loader(config, data, scan, rows["train"], pin=cuda) if where == "device"
             else _side_loader(config, data, scan, "train", rows["train"]))
    return Loaders(train, loaders["val"], loaders["test"], rows["train"], rows["val"], rows["test"], scan, where)


def device_train_loader(config: RunConfig, data: PreparedData, scan: ScanResult, rows: np.ndarray,
                        pin: bool = False) -> ResidentLoader:
    """The device path's train loader over manifest ``rows`` (cached images needed: data.cache_images)."""
    weights = sample_weights(data.targets, data.tasks[0], rows) if config.data.balanced_sampling else None
    return resident_train_loader(config, [scan.images[i] for i in rows], {k: v[rows] for k, v in data.targets.items()},
                                 weights, pin)


def _side_loader(config: RunConfig, data: PreparedData, scan: ScanResult, side: str,
                 rows: np.ndarray) -> DataLoader | None:
    if side == "val" and not len(rows):
        return None
    augment = build_train_augment(config.augment) if side == "train" else None
    dataset = ImageSet([data.manifest.paths[i] for i in rows], {k: v[rows] for k, v in data.targets.items()},
                       config.preprocess, augment, [scan.images[i] for i in rows] if config.data.cache_images else None,
                       seed=config.seed)
    weights = (sample_weights(data.targets, data.tasks[0], rows)
               if side == "train" and config.data.balanced_sampling else None)
    return build_loader(dataset, config.trainer.batch_size, side == "train", config.data.num_workers, config.seed,
                        pin_memory=torch.cuda.is_available(), weights=weights)
