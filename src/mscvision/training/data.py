"""Data sets and loaders: core's decode + preprocess, albumentations between its two halves."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mscvision.core.errors import ImageError
from mscvision.core.imageio import decode_image
from mscvision.core.preprocess import PreprocessSpec, standardize, to_unit_range
from mscvision.training.augment import apply_augment


def load_unit_image(path, spec: PreprocessSpec) -> np.ndarray:
    """Decode and scale one image: the first half of ``preprocess``, shared with the runtime."""
    decoded = decode_image(path)
    return to_unit_range(decoded.array, spec, decoded.pixel_size_um, source=str(path))


@dataclass
class ScanResult:
    images: list[np.ndarray | None]  # cached (H, W, C) float32 in [0, 1], or None when not cached
    keep: np.ndarray  # indices of usable images
    skipped: list[str]  # messages for images skipped as unreadable


def scan_images(paths, spec: PreprocessSpec, cache: bool, skip_unreadable: bool) -> ScanResult:
    """Decode every image once: bad files fail here, with their name, not mid-epoch."""
    images, keep, skipped = [], [], []
    for i, path in enumerate(paths):
        try:
            unit = load_unit_image(path, spec)
        except ImageError as exc:
            if not skip_unreadable:
                raise ImageError(exc.path, f"{exc.reason} (or set data.skip_unreadable: true to skip "
                                           "such images with a warning)") from exc
            skipped.append(str(exc))
            images.append(None)
            continue
        images.append(unit if cache else None)
        keep.append(i)
    return ScanResult(images, np.asarray(keep, np.int64), skipped)


class ImageSet(Dataset):
    """Items are keyed ``epoch * len + index`` (see ``EpochSampler``) so augmentation is seeded per
    (run seed, epoch, sample) and reproducible with any worker count or after a resume."""

    def __init__(self, paths, targets: dict[str, np.ndarray], spec: PreprocessSpec, augment=None,
                 cached: list[np.ndarray | None] | None = None, seed: int = 0):
        self.paths = list(paths)
        self.targets = {k: torch.as_tensor(v, dtype=torch.long) for k, v in targets.items()}
        self.spec, self.augment, self.seed = spec, augment, seed
        self.cached = cached

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int):
        epoch, i = divmod(int(key), len(self.paths))
        unit = self.cached[i] if self.cached is not None else load_unit_image(self.paths[i], self.spec)
        if self.augment is not None:
            seed = int(np.random.SeedSequence([self.seed, epoch, i]).generate_state(1)[0])
            unit = apply_augment(self.augment, unit, seed)
        x = torch.from_numpy(standardize(unit, self.spec))
        return x, {task: t[i] for task, t in self.targets.items()}


class EpochSampler(Sampler[int]):
    """Shuffled (or weighted) order from (seed, epoch); yields ``epoch * n + index``.

    Lightning calls ``set_epoch`` before each epoch, so a resumed run replays the same order.
    """

    def __init__(self, n: int, seed: int, shuffle: bool, weights: np.ndarray | None = None):
        self.n, self.seed, self.shuffle, self.weights, self.epoch = n, seed, shuffle, weights, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.weights is not None:
            order = rng.choice(self.n, size=self.n, replace=True, p=self.weights / self.weights.sum())
        elif self.shuffle:
            order = rng.permutation(self.n)
        else:
            order = np.arange(self.n)
        offset = self.epoch * self.n if self.shuffle or self.weights is not None else 0
        return iter((offset + order).tolist())


def build_loader(dataset: ImageSet, batch_size: int, train: bool, workers: int, seed: int,
                pin_memory: bool = False, weights: np.ndarray | None = None) -> DataLoader:
    sampler = EpochSampler(len(dataset), seed, shuffle=train, weights=weights)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      drop_last=train and len(dataset) > batch_size, pin_memory=pin_memory,
                      persistent_workers=False)
