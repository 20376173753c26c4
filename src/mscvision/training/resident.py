"""The device path (``data.augment_on``): training batches gathered and augmented where the model trains.

The CPU path (data.ImageSet in a DataLoader) augments each image with albumentations in the loader
workers, then collates and copies the batch to the device. On a GPU that caps training at what the
CPU cores can augment (README "On a CUDA GPU": 0.19 of the in-memory rate on an H200). Here instead:

- ``ResidentImages``: the cached unit-range training images as one (N, C, h, w) float32 tensor with
  their targets, in pinned host memory on a CUDA machine, moved to the training device once, when
  the fit starts (``PlaceResident``, from the rank's own device).
- ``ResidentLoader``: what ``trainer.fit`` gets as its train loader. It draws the same epoch order as
  the CPU path (``data.EpochSampler``: shuffle or balanced sampling from (seed, epoch); ``Shard`` for
  this rank's share on W processes), cuts it into batches with the same drop-last rule, gathers each
  batch on the device, augments it there (``device_augment.BatchAugment``, built from the same plan
  as the CPU path's albumentations pipeline) and standardizes it as ``core.preprocess.standardize``.
  No worker processes; Lightning calls ``sampler.set_epoch`` as for a DataLoader.

Seeding is per (run seed, epoch, index), as on the CPU path (device_augment.py), so the draws do not
depend on the batch size, the rank or the process count.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch

from mscvision.core.preprocess import PreprocessSpec
from mscvision.training.config import RunConfig
from mscvision.training.data import EpochSampler
from mscvision.training.device_augment import BatchAugment
from mscvision.training.augment import augment_plan
from mscvision.training.distributed import Shard

DEVICE_MEMORY_SHARE = 0.25  # auto: at most this share of the GPU's memory for the resident images, else cpu


def augment_on(config: RunConfig, cuda: bool, n_images: int) -> str:
    """``data.augment_on`` resolved for this run: ``cpu`` or ``device``.

    auto: device when training on CUDA with the images cached and the resident tensor taking at most
    ``DEVICE_MEMORY_SHARE`` of the GPU's memory (a note says why not otherwise); else cpu.
    """
    wanted = config.data.augment_on
    if wanted != "auto":
        return wanted
    if not (cuda and config.data.cache_images):
        return "cpu"
    need = n_images * config.preprocess.in_channels * math.prod(config.preprocess.size) * 4
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    if need > DEVICE_MEMORY_SHARE * total:
        print(f"note: data.augment_on auto: the {n_images} training images would take {need / 2**30:.1f} GiB of the "
              f"GPU's {total / 2**30:.0f} GiB; augmenting on the CPU (data.augment_on=device forces it)", flush=True)
        return "cpu"
    return "device"


class ResidentImages:
    """Cached (h, w, C) float32 images in [0, 1] as one (N, C, h, w) tensor, with their targets."""

    def __init__(self, images: list[np.ndarray], targets: dict[str, np.ndarray], pin: bool = False):
        stacked = torch.from_numpy(np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2), dtype=np.float32))
        self.images = stacked.pin_memory() if pin else stacked
        self.targets = {k: torch.as_tensor(v, dtype=torch.long) for k, v in targets.items()}

    def __len__(self) -> int:
        return len(self.images)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> ResidentImages:
        """Move images and targets to ``device`` (once: a no-op when they are there)."""
        device = torch.device(device)
        if self.images.device != device:
            self.images = self.images.to(device, non_blocking=True)
            self.targets = {k: v.to(device, non_blocking=True) for k, v in self.targets.items()}
        return self


class ResidentLoader:
    """Batches of ``data`` in ``sampler``'s order, gathered, augmented and standardized on ``data``'s device.

    Yields ``(x, targets)`` like the CPU path's DataLoader: x (B, C, h, w) float32, targets per task (B,).
    """

    def __init__(self, data: ResidentImages, sampler, batch_size: int, drop_last: bool, spec: PreprocessSpec,
                 augment: BatchAugment | None):
        self.data, self.sampler, self.batch_size, self.drop_last = data, sampler, batch_size, drop_last
        self.spec, self.augment = spec, augment

    @property
    def dataset(self) -> ResidentImages:
        return self.data

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        keys = np.fromiter(iter(self.sampler), dtype=np.int64)
        epoch, index = np.divmod(keys, len(self.data))
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield self.batch(epoch[start:start + self.batch_size], index[start:start + self.batch_size])

    def batch(self, epoch: np.ndarray, index: np.ndarray) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The images ``index`` (drawn in ``epoch``), augmented and standardized, with their targets."""
        rows = torch.from_numpy(np.ascontiguousarray(index)).to(self.data.device, non_blocking=True)
        x = self.data.images.index_select(0, rows)
        if self.augment is not None:
            x = self.augment(x, epoch, index)
        return standardize_batch(x, self.spec), {k: v.index_select(0, rows) for k, v in self.data.targets.items()}

    def shard(self, world: int) -> ResidentLoader:
        """This rank's share of the epoch order (``Shard``, equal shares), batched as distributed.shard_loader does."""
        share = len(self.sampler) // world
        return ResidentLoader(self.data, Shard(self.sampler, world, equal=True), self.batch_size,
                              self.drop_last and share > self.batch_size, self.spec, self.augment)


def standardize_batch(x: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """``core.preprocess.standardize`` on a (B, C, h, w) batch: the same float32 operations, in the same order."""
    if spec.mean is not None:
        x = x - torch.tensor(spec.mean, dtype=torch.float32).to(x.device, non_blocking=True).view(1, -1, 1, 1)
    if spec.std is not None:
        x = x / torch.tensor(spec.std, dtype=torch.float32).to(x.device, non_blocking=True).view(1, -1, 1, 1)
    return x.contiguous()


def resident_train_loader(config: RunConfig, images: list[np.ndarray], targets: dict[str, np.ndarray],
                          weights: np.ndarray | None, pin: bool) -> ResidentLoader:
    """The device path's train loader over ``images`` (the training split's cached images, in row order)."""
    data = ResidentImages(images, targets, pin=pin)
    sampler = EpochSampler(len(data), config.seed, shuffle=True, weights=weights)
    plan = augment_plan(config.augment)
    augment = BatchAugment(plan, config.seed) if plan is not None else None
    batch_size = config.trainer.batch_size
    return ResidentLoader(data, sampler, batch_size, len(data) > batch_size, config.preprocess, augment)


class PlaceResident(L.Callback):
    """When the fit starts: the resident images go to this rank's device (``trainer.strategy.root_device``)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader = trainer.train_dataloader
        if isinstance(loader, ResidentLoader):
            loader.data.to(trainer.strategy.root_device)
