"""One training run, end to end: data → fit → test on held-out groups → run directory."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from mscvision.core.errors import ConfigError, DataError
from mscvision.core.fileio import write_json_atomic, write_text_atomic
from mscvision.core.split_check import ALL, HELD_OUT, SplitCounts, mark_estimable
from mscvision.core.machine import cpu_flags
from mscvision.training.config import RunConfig, save_config
from mscvision.training.data import ScanResult, load_unit_image
from mscvision.training.dataset_setup import (PreparedData, check_split, loss_class_weights, prepare_data, report_split,
                                              split_csv)
from mscvision.training.distributed import RankSetup, fit_loaders, is_primary
from mscvision.training.evaluate import evaluate_run
from mscvision.training.finetune import init_from_run
from mscvision.training.loaders import build_loaders
from mscvision.training.module import MONITOR, MscClassifier
from mscvision.training.normalization import freeze_auto_normalization
from mscvision.training.quiet import quiet_lightning
from mscvision.training.resident import PlaceResident
from mscvision.training.run_files import load_checkpoint, locate_run, manifest_record, new_run_dir

NATIVE_BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}  # without them a CPU emulates bf16: far slower than fp32


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    metrics: dict
    checkpoint: Path  # the weights evaluated and exported (trainer.select)
    test_rows: np.ndarray | None = None  # manifest rows of the test split, in prediction order
    test_probs: dict[str, np.ndarray] | None = None  # plain single pass, per task
    test_tta_probs: dict[str, np.ndarray] | None = None  # dihedral x8 TTA (trainer.tta), per task
    # the deployed pass (export.tta) before its temperature; the deployed one above is calibrated
    test_uncalibrated_probs: dict[str, np.ndarray] | None = None


def train(config: RunConfig, run_dir: Path | None = None, resume: bool = False,
          callbacks: tuple = (), split: np.ndarray | None = None) -> RunResult:
    """Train, then evaluate the selected checkpoint on val and the held-out test groups.

    ``split`` (train/val/test per manifest row) replaces the configured split: cross-validation.
    On several processes (trainer.devices x trainer.num_nodes) every rank runs this; only rank 0
    makes the run directory and writes into it (training/distributed.py), and every rank returns
    the same figures.
    """
    started = time.perf_counter()
    # resume: the run's last.ckpt, refused before any work when it is not there
    resume_from = locate_run(run_dir, resume=True).checkpoint if resume else None
    L.seed_everything(config.seed, workers=True, verbose=False)
    if config.trainer.num_threads:
        torch.set_num_threads(config.trainer.num_threads)
    data = prepare_data(config, split)  # a split that would mislead is refused before the run dir exists
    config = freeze_auto_normalization(config, data)  # preprocess mean/std: auto → numbers, before the model
    cuda = _use_cuda(config)
    check_processes(config, cuda)
    primary = is_primary()  # the other ranks learn the run directory from rank 0 when the fit starts
    run_dir = run_dir or (new_run_dir(config) if primary else None)
    writes_to = run_dir if primary else None
    if writes_to:
        print(f"run directory: {run_dir}", flush=True)
        save_config(config, run_dir / "config.yaml")
        for message in data.warnings:
            print(f"warning: {message}", flush=True)

    loaders = build_loaders(config, data, cuda)
    split_counts = show_split(data, loaders.scan.keep, writes_to)
    if not data.manifest.has_groups and primary:
        warn_near_duplicates(data, loaders.scan, config.preprocess)
    # with data.val_fraction 0 a val split is the calibration slice: it picks no epoch and stops nothing
    monitored = loaders.val if config.data.val_fraction > 0 else None
    train_loader, val_loader = fit_loaders(loaders.train, monitored, config.trainer.world_size)
    module = MscClassifier(config, data.tasks, loss_class_weights(config, data, loaders.train_rows),
                           channels_last=_channels_last(config, cuda))
    if config.model.init_from and not resume:
        for message in init_from_run(module, config.model.init_from):
            print(message, flush=True)
    # on ranks other than 0 the directories are rank 0's, broadcast when the fit starts (the
    # checkpoint callbacks broadcast theirs too); until then nothing is written there
    ranks = RankSetup(run_dir, config.seed, primary)
    target = run_dir or Path(config.output_dir) / config.name
    # Lightning >= 2.5 refreshes save_last only when "best" improves; resume needs every epoch's state.
    checkpoints = [ModelCheckpoint(dirpath=target / "checkpoints", filename="last", monitor=None, save_top_k=1,
                                   enable_version_counter=False)]
    if config.trainer.select == "best":  # with "last" no best.ckpt is written: a run dir holds one model
        checkpoints.append(ModelCheckpoint(dirpath=target / "checkpoints", filename="best", monitor=MONITOR,
                                           mode="max", enable_version_counter=False))
    # the device path's images go to this rank's device when the fit starts (training/resident.py)
    placement = [PlaceResident()] if loaders.augment_on == "device" else []
    trainer = _build_trainer(config, target, cuda, [ranks, *placement, *checkpoints, *callbacks],
                             validate=val_loader is not None)
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(resume_from) if resume_from else None,
                weights_only=True)  # the run's own file, yet still only tensors and plain values
    run_dir = ranks.run_dir
    if trainer.interrupted:  # Ctrl-C: checkpoints are saved; `--resume RUN_DIR` continues
        return RunResult(run_dir, {}, run_dir / "checkpoints" / "last.ckpt")
    chosen = locate_run(run_dir).checkpoint
    metrics, test_probs = evaluate_run(chosen, data, loaders, run_dir, cuda, config.trainer.tta, config.export.tta,
                                       config.decide if config.calibration.enabled else None)
    mark_held_out_estimability(metrics, split_counts)
    # 0 where ddp_spawn launched the fit (it ran in other processes): then last.ckpt counts them
    epochs = trainer.current_epoch or load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["epoch"] + 1
    metrics["run"] = {"seconds": round(time.perf_counter() - started, 1), "skipped_images": loaders.skipped,
                      "epochs": epochs, "checkpoint": chosen.name,
                      "config_hash": config.hash(), "device": "cuda" if cuda else "cpu",
                      "augment_on": loaders.augment_on,
                      **process_record(config, trainer),
                      "data_manifest": manifest_record(data.source, len(data.manifest))}
    if is_primary():
        write_json_atomic(run_dir / "metrics.json", metrics)
    return RunResult(run_dir, metrics, chosen, loaders.test_rows, test_probs["test"], test_probs.get("test_tta"),
                     test_probs["uncalibrated"])


def process_record(config: RunConfig, trainer: L.Trainer) -> dict:
    """metrics.json run: how many processes trained, the effective batch and the learning-rate rule."""
    return {"devices": trainer.num_devices, "num_nodes": trainer.num_nodes, "world_size": trainer.world_size,
            "strategy": config.trainer.strategy, "batch_size_per_device": config.trainer.batch_size,
            "effective_batch_size": config.trainer.batch_size * trainer.world_size,
            "lr": config.optim.lr, "lr_scaling": "none"}  # optim.lr whatever the device count (config.py says why)


def show_split(data: PreparedData, usable: np.ndarray, run_dir: Path | None) -> SplitCounts:
    """Before the first epoch: check the split again over the usable images (an image skipped as
    unreadable may have been a class's last training image), print the warnings and the split
    table, and write ``split.csv`` and ``split_table.csv`` (the same rows, counted; not without
    ``run_dir``: a rank other than 0 checks the same split and writes nothing)."""
    counts, warnings = check_split(data, usable)
    report_split([counts], warnings, run_dir)
    lost = [side for side in counts.sides if counts.cells[ALL][ALL][side].images == 0]
    if lost:  # a held-out side with no image left has no figures to measure: refused before the first epoch
        raise DataError(f"every {' and every '.join(lost)} image was skipped as unreadable: the run would have "
                        f"no {'/'.join(lost)} figures. Fix: repair or replace those images (the warnings above "
                        "name them), or put readable images on that side.")
    if run_dir is not None:
        write_text_atomic(run_dir / "split.csv", split_csv(data, usable))
    return counts


def mark_held_out_estimability(metrics: dict, counts: SplitCounts) -> None:
    """Mark, per held-out block (val, test and their TTA passes), the classes whose figures cannot
    be estimated (absent from that side, or one group there), in metrics.json and on the console."""
    for name in list(metrics):
        side = name.split("_")[0]  # "test_tta" measures the test side
        if side not in HELD_OUT or side not in counts.sides:
            continue
        mark_estimable(metrics[name], counts, side)
        for task, block in metrics[name].items():
            if block["not_estimable"] and name == side:  # once per side: its TTA pass has the same classes
                print(f"note: {name} figures of {task!r} not estimable for "
                      + ", ".join(f"{c!r} ({why})" for c, why in block["not_estimable"].items()), flush=True)


def warn_near_duplicates(data: PreparedData, scan: ScanResult, spec) -> None:
    """Without groups, look for the same image on both sides of the split (perceptual hash)."""
    from mscvision.core.duplicates import average_hash, cross_split_near_duplicates

    rows = scan.keep
    images = (scan.images[i] if scan.images[i] is not None else load_unit_image(data.manifest.paths[i], spec)
              for i in rows)
    hashes = np.stack([average_hash(image) for image in images])
    pairs = cross_split_near_duplicates(hashes, data.split[rows])
    if pairs:
        examples = ", ".join(f"{data.manifest.paths[rows[a]].name} ~ {data.manifest.paths[rows[b]].name}"
                             for a, b, _ in pairs[:3])
        print(f"warning: {len(pairs)} near-duplicate image pair(s) straddle the split (e.g. {examples}); "
              "held-out figures may be inflated. Fix: add a 'group' column (donor, well, track).", flush=True)


def _use_cuda(config: RunConfig) -> bool:
    if config.trainer.accelerator == "cpu":
        return False
    return torch.cuda.is_available()


def check_processes(config: RunConfig, cuda: bool) -> None:
    """Refuse, before the run directory exists, process settings this machine cannot run."""
    t = config.trainer
    if cuda and t.devices > torch.cuda.device_count():
        raise ConfigError(f"trainer.devices={t.devices}, but this machine has {torch.cuda.device_count()} CUDA GPU(s). "
                          f"Fix: trainer.devices={torch.cuda.device_count()} (or trainer.accelerator=cpu).")
    if t.sync_batchnorm and t.world_size > 1 and not cuda:
        raise ConfigError("trainer.sync_batchnorm: torch's SyncBatchNorm runs on GPUs only, and this run trains on "
                          "CPU processes. Fix: trainer.sync_batchnorm: false, or train on GPUs.")


def _channels_last(config: RunConfig, cuda: bool) -> bool:
    return cuda if config.trainer.channels_last == "auto" else config.trainer.channels_last == "true"


def _precision(wanted: str, cuda: bool) -> str:
    """``auto``: bf16 autocast where the hardware computes bf16 natively (CUDA; CPUs with AVX512-BF16 or
    AMX), else fp32. An explicit bf16 on a CPU without them is honoured, with a warning."""
    native = cuda or bool(NATIVE_BF16_CPU_FLAGS & set(cpu_flags()))
    if wanted == "auto":
        return "bf16-mixed" if native else "32-true"
    if wanted.startswith("bf16") and not native:
        print(f"warning: trainer.precision={wanted} on a CPU without AVX512-BF16/AMX runs emulated bf16, many "
              "times slower than fp32. Fix: trainer.precision=auto (or 32-true).", flush=True)
    return wanted


def _build_trainer(config: RunConfig, run_dir: Path, cuda: bool, callbacks: list, validate: bool = True) -> L.Trainer:
    t = config.trainer
    precision = _precision(t.precision, cuda)
    if validate:
        callbacks = [*callbacks, EarlyStopping(MONITOR, mode="max", patience=t.early_stopping_patience)]
    if t.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    quiet_lightning()
    return L.Trainer(
        accelerator="gpu" if cuda else "cpu", devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        sync_batchnorm=t.sync_batchnorm and t.world_size > 1, precision=precision,
        # the loaders are already this rank's unpadded share (training/distributed.py): Lightning's
        # DistributedSampler would pad the held-out ones with repeated images
        use_distributed_sampler=False,
        max_epochs=t.max_epochs, deterministic=t.deterministic, callbacks=callbacks,
        logger=[CSVLogger(run_dir, name="logs", version=""), TensorBoardLogger(run_dir, name="logs", version="")],
        limit_train_batches=t.limit_train_batches, limit_val_batches=t.limit_val_batches,
        log_every_n_steps=t.log_every_n_steps, enable_progress_bar=t.progress_bar,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=run_dir,
    )
