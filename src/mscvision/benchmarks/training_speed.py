"""Training throughput: the real input pipelines vs tensors in memory.

Two pipelines, side by side in one run: the CPU path (cache → albumentations per image in the
loader workers → collate → copy → step) and the device path (cached images resident on the
device → gather, augment and standardize there in batches → step; ``data.augment_on``).
"""

from __future__ import annotations

import dataclasses
import time

import torch

from mscvision.training.config import RunConfig
from mscvision.training.dataset_setup import loss_class_weights, prepare_data
from mscvision.training.loaders import build_loaders, device_train_loader
from mscvision.training.module import MscClassifier
from mscvision.training.normalization import freeze_auto_normalization


def _step(module: MscClassifier, optimizer, x, targets, precision_ctx) -> None:
    with precision_ctx():
        _, logits = module(x)
        loss = module.multitask_loss(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def training_throughput(config: RunConfig, steps: int = 20, device: str = "cpu", bf16: bool = False,
                        channels_last: bool = False, compile_model: bool = False) -> dict:
    """Images/s of ``steps`` optimiser steps fed three ways, in one run: by the CPU path's loader
    (albumentations per image in ``data.num_workers`` workers; ``pipeline_img_s``), by the device
    path's loader (the cached images resident on ``device``, augmented there in batches:
    training/resident.py; ``device_pipeline_img_s``, None without ``data.cache_images``) and by one
    batch kept in memory. ``ratio`` and ``device_ratio``: each pipeline over in-memory."""
    data = prepare_data(config)
    config = freeze_auto_normalization(config, data)  # preprocess mean/std: auto → numbers, as train() does
    cpu_path = dataclasses.replace(config, data=dataclasses.replace(config.data, augment_on="cpu"))
    loaders = build_loaders(cpu_path, data)
    resident = None
    if config.data.cache_images:
        resident = device_train_loader(config, data, loaders.scan, loaders.train_rows, pin=device.startswith("cuda"))
        resident.data.to(device)  # what PlaceResident does when a fit starts
    module = MscClassifier(config, data.tasks, loss_class_weights(config, data, loaders.train_rows),
                           channels_last=channels_last).to(device).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    if compile_model:
        module.net = torch.compile(module.net)
    ctx = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if bf16 else torch.enable_grad  # noqa: E731
    loader = loaders.train
    batch_size = loader.batch_size

    def pipeline(source) -> float:
        it, done = iter(source), 0
        x, y = next(it)  # warm-up step (worker start, first kernels)
        _step(module, optimizer, x.to(device), {k: v.to(device) for k, v in y.items()}, ctx)
        _sync(device)
        start = time.perf_counter()
        while done < steps:
            try:
                x, y = next(it)
            except StopIteration:
                it = iter(source)
                continue
            _step(module, optimizer, x.to(device, non_blocking=True), {k: v.to(device) for k, v in y.items()}, ctx)
            done += 1
        _sync(device)
        return steps * batch_size / (time.perf_counter() - start)

    def in_memory() -> float:
        x, y = next(iter(loader))
        x, y = x.to(device), {k: v.to(device) for k, v in y.items()}
        _step(module, optimizer, x, y, ctx)
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            _step(module, optimizer, x, y, ctx)
        _sync(device)
        return steps * batch_size / (time.perf_counter() - start)

    memory_rate = in_memory()
    pipeline_rate = pipeline(loader)
    device_rate = pipeline(resident) if resident is not None else None
    return {"pipeline_img_s": round(pipeline_rate, 1), "in_memory_img_s": round(memory_rate, 1),
            "ratio": round(pipeline_rate / memory_rate, 3),
            "device_pipeline_img_s": round(device_rate, 1) if device_rate is not None else None,
            "device_ratio": round(device_rate / memory_rate, 3) if device_rate is not None else None,
            "batch_size": batch_size, "steps": steps,
            "workers": config.data.num_workers, "augment": config.augment.enabled, "device": device,
            "bf16": bf16, "channels_last": channels_last, "compile": compile_model}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
