"""Training on several processes (Lightning DDP, launched by Lightning itself, torchrun or SLURM).

Three rules keep a multi-process run one run, with the figures of one:

- One writer. Only the primary process (global rank 0) creates the run directory and writes
  files; every other rank learns the directory's name from it when the process group comes up
  (``RankSetup.setup``: a broadcast), so a run has one directory however it was launched.
- Disjoint shares. Every rank computes the same epoch order from (seed, epoch) (``EpochSampler``)
  and takes positions r, r+W, r+2W, … of it (``Shard``, W processes). Training shares are cut
  to equal length, so the ranks step in lockstep, by leaving out the epoch order's last < W
  draws (they change with each epoch's order); evaluation shares are not padded, so every
  held-out image is scored exactly once. (torch's DistributedSampler, which Lightning would put
  in, pads the shares by repeating images: Lightning #4732.) With batch_size B/W per process,
  the W per-rank batches of a step together are exactly the one-process batch of size B.
- Dataset order. Per-image outputs of the ranks are gathered and put back in the unsharded
  loader's order on every rank (``gather_in_order``), so metrics are computed once, over exactly
  the data set, and every rank takes the same early-stopping and checkpoint decisions.

Augmentation needs no per-rank seed: each image is augmented from its own (run seed, epoch,
index) seed (``data.ImageSet``; on the device path ``device_augment.BatchAugment``), so a rank, a
worker or a one-process run draws the same augmentation for the same image, and disjoint shares
get different ones. The torch generator (mixup's pairs and weights, dropout) is reseeded per rank
from (seed, rank).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from mscvision.core.errors import DataError

# What each launcher sets in the processes it starts: torchrun RANK (and LOCAL_RANK), Lightning's own
# launcher LOCAL_RANK and NODE_RANK, srun SLURM_PROCID, Open MPI / MPICH / LSF their ranks.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK",
                  "JSM_NAMESPACE_RANK")


def launched_as_primary() -> bool:
    """Before the process group exists: whether no launcher marked this process as another rank."""
    return all(int(os.environ.get(name) or 0) == 0 for name in RANK_VARIABLES)


def rank_and_world() -> tuple[int, int]:
    """This process's global rank and the number of processes, once torch.distributed is up; else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_primary() -> bool:
    """Whether this process writes: global rank 0 once the process group is up, else what the launcher said."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return launched_as_primary()


def quiet_secondary() -> None:
    """Ranks other than 0 print nothing on stdout: rank 0 prints every line once (errors stay on stderr)."""
    import sys

    if not launched_as_primary():
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process


def rank_seed(seed: int, rank: int) -> int:
    """Rank ``rank``'s torch seed: the run seed on rank 0 (a one-process run is unchanged), mixed with the rank else."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


class Shard(Sampler[int]):
    """This rank's share of ``sampler``'s order: positions rank, rank + W, rank + 2W, … (W = ``world``).

    ``equal`` (training): every share holds len // W items, so every rank takes the same number of
    steps. Otherwise (evaluation) the shares differ by at most one item and together hold each item
    once. The rank is read when the order is drawn, inside the fit, where torch.distributed knows
    it whichever launcher started the process.
    """

    def __init__(self, sampler: Sampler, world: int, equal: bool):
        self.sampler, self.world, self.equal = sampler, world, equal

    def set_epoch(self, epoch: int) -> None:  # Lightning calls it before each epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def _rank(self) -> int:
        rank, world = rank_and_world()
        if world != self.world:
            raise RuntimeError(f"{self.world} processes configured (trainer.devices x trainer.num_nodes), but "
                               f"torch.distributed runs {world}: launch as many processes as configured.")
        return rank

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.world if self.equal else len(range(self._rank(), n, self.world))

    def __iter__(self):
        return iter(self.share(self._rank()))

    def share(self, rank: int) -> list[int]:
        """Rank ``rank``'s items of the current epoch, in order."""
        order = list(self.sampler)
        if self.equal:
            order = order[:len(order) - len(order) % self.world]
        return order[rank::self.world]


def shard_loader(loader: DataLoader, world: int, equal: bool) -> DataLoader:
    """``loader`` over this rank's share (``Shard``): same data set, batch size and workers."""
    share = len(loader.sampler) // world
    extra = {"prefetch_factor": loader.prefetch_factor} if loader.num_workers else {}
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=Shard(loader.sampler, world, equal),
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                      # build_loader's rule, per share: drop an incomplete last batch only when a full one remains
                      drop_last=loader.drop_last and share > loader.batch_size,
                      worker_init_fn=loader.worker_init_fn, persistent_workers=loader.persistent_workers, **extra)


def fit_loaders(train, val: DataLoader | None, world: int) -> tuple[Any, DataLoader | None]:
    """What ``trainer.fit`` gets: the run's loaders on one process; on W, this rank's shares of them.

    ``train``: a DataLoader (the CPU path) or anything with ``shard(world)`` (resident.ResidentLoader,
    the device path: the same ``Shard`` of the same epoch order, batched alike).

    Refuses a val split with fewer images than processes: a rank without a validation image would
    leave the others waiting in DDP's first evaluation forward pass.
    """
    if world == 1:
        return train, val
    if val is not None and len(val.sampler) < world:
        raise DataError(f"the val split holds {len(val.sampler)} image(s), fewer than the {world} training "
                        "processes (trainer.devices x trainer.num_nodes). Fix: train on fewer devices, or raise "
                        "data.val_fraction.")
    train = train.shard(world) if hasattr(train, "shard") else shard_loader(train, world, equal=True)
    return train, val and shard_loader(val, world, equal=False)


def gather_in_order(local: Any, item_axis: int = 0) -> Any:
    """Every rank's per-item outputs, back in the unsharded order, on every rank.

    ``local``: arrays whose ``item_axis`` runs over this rank's items (positions rank, rank + W, …
    as ``Shard`` gives them), or dicts / tuples of them. One process: returned as it is.
    """
    _, world = rank_and_world()
    if world == 1:
        return local
    parts: list[Any] = [None] * world
    torch.distributed.all_gather_object(parts, local)
    return _interleave(parts, item_axis)


def _interleave(parts: list[Any], item_axis: int = 0) -> Any:
    first = parts[0]
    if isinstance(first, dict):
        return {key: _interleave([part[key] for part in parts], item_axis) for key in first}
    if isinstance(first, tuple):
        return tuple(_interleave([part[i] for part in parts], item_axis) for i in range(len(first)))
    arrays = [np.moveaxis(np.asarray(part), item_axis, 0) for part in parts]
    out = np.empty((sum(len(a) for a in arrays), *arrays[0].shape[1:]), dtype=arrays[0].dtype)
    for rank, values in enumerate(arrays):
        if len(out[rank::len(arrays)]) != len(values):
            raise RuntimeError(f"rank {rank} returned {len(values)} items, not its share of {len(out)}")
        out[rank::len(arrays)] = values
    return np.moveaxis(out, 0, item_axis)


def sum_over_ranks(values: np.ndarray) -> np.ndarray:
    """The sum over the ranks of each rank's ``values`` (one process: ``values``)."""
    _, world = rank_and_world()
    if world == 1:
        return values
    parts: list[Any] = [None] * world
    torch.distributed.all_gather_object(parts, np.asarray(values))
    return np.sum(parts, axis=0)


def in_shards(predict: Callable, model, loader, *args, item_axis: int = 0, **kwargs) -> Any:
    """``predict(model, loader, *args, **kwargs)`` split over the ranks: each runs its share of the
    loader, and every rank gets the outputs of all of them in ``loader``'s order. ``predict`` returns
    arrays with one entry per image along ``item_axis`` (or dicts / tuples of them); on one
    process, or for fewer images than processes, or for anything but a DataLoader, it runs on the
    whole loader here."""
    _, world = rank_and_world()
    if world == 1 or not isinstance(loader, DataLoader) or len(loader.sampler) < world:
        return predict(model, loader, *args, **kwargs)
    return gather_in_order(predict(model, shard_loader(loader, world, equal=False), *args, **kwargs), item_axis)


class RankSetup(L.Callback):
    """When the fit's process group is up: every rank takes the primary's run directory (``run_dir``
    afterwards), and ranks other than 0 reseed torch from (seed, rank).

    ``primary``: what this process decided before the fit (it wrote the run directory, or not). A
    launcher whose ranks ``launched_as_primary`` misread is refused here, on every rank at once.
    """

    def __init__(self, run_dir: Path | None, seed: int, primary: bool):
        self.run_dir, self.seed, self.primary, self.pid = run_dir, seed, primary, os.getpid()

    def __setstate__(self, state: dict) -> None:
        # ddp_spawn: a fresh process unpickles the trainer, this callback among it, before its fit
        # starts; it gets the launching process's quiet filters here (training/quiet.py)
        from mscvision.training.quiet import quiet_lightning

        self.__dict__.update(state)
        quiet_lightning()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.world_size == 1:
            return
        # ddp_spawn runs the fit in fresh processes: only the launching one decided anything before it
        agrees = os.getpid() != self.pid or self.primary == trainer.is_global_zero
        if not trainer.strategy.reduce_boolean_decision(agrees, all=True):
            raise RuntimeError(
                f"rank {trainer.global_rank}: the launcher's environment ({', '.join(RANK_VARIABLES)}) did not say "
                "which process is rank 0, so more than one wrote a run directory"
                + (f" ({self.run_dir})" if self.run_dir and not trainer.is_global_zero else "")
                + ". Fix: launch with Lightning itself, torchrun or srun.")
        shared = trainer.strategy.broadcast(str(self.run_dir) if self.run_dir is not None else None)
        self.run_dir = Path(shared)
        torch.manual_seed(rank_seed(self.seed, trainer.global_rank))


def wait_for_primary(ready: Callable[[], bool], what: str, timeout_s: float = 3600.0) -> None:
    """On a rank other than 0 started at the same time as rank 0 (torchrun, srun): wait until rank 0
    has made ``what`` (``ready()`` true), instead of making it again beside it."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise DataError(f"waited {timeout_s / 60:.0f} min for rank 0 to make {what}. Fix: check rank 0's log; "
                            "or make it first with one process.")
        time.sleep(2.0)
