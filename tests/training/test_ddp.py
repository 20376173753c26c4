"""Training on several processes (DDP on CPU: gloo, 2 processes, a tiny model): one run directory,
figures over exactly the held-out images whatever the process count, resume across process counts."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from conftest import REPO, make_shapes_dataset, tiny_overrides
from mscvision.training.config import load_config
from mscvision.training.distributed import Shard, _interleave
from mscvision.training.data import EpochSampler

FIGURES = ("balanced_accuracy", "macro_f1", "weighted_f1", "n", "confusion_matrix")


def odd_split_dataset(root: Path) -> tuple[Path, int, int]:
    """The shapes set with a fixed split (a manifest ``split`` column) whose val and test sides hold
    an odd number of images (11 each): what DistributedSampler would pad to 12 on 2 processes."""
    manifest = make_shapes_dataset(root)
    lines = manifest.read_text().splitlines()
    side = {**{f"g{g}": "train" for g in range(4)}, "g4": "val", "g5": "val", "g6": "test", "g7": "test"}
    rows, dropped = [lines[0] + ",split"], set()
    for line in lines[1:]:
        group = line.rsplit(",", 1)[1]
        if side[group] != "train" and side[group] not in dropped:  # one image fewer on each held-out side
            dropped.add(side[group])
            continue
        rows.append(f"{line},{side[group]}")
    manifest.write_text("\n".join(rows) + "\n")
    return manifest, 11, 11


def run_script(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def ddp_overrides(manifest: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    return [*tiny_overrides(manifest, out, epochs=epochs), "trainer.accelerator=cpu", "trainer.precision=32-true",
            "trainer.batch_size=4", "trainer.early_stopping_patience=100", *extra]


def test_two_process_run_writes_one_run_and_scores_each_held_out_image_once(tmp_path):
    from mscvision.training.dataset_setup import prepare_data
    from mscvision.training.evaluate import evaluate_run
    from mscvision.training.loaders import build_loaders

    manifest, n_val, n_test = odd_split_dataset(tmp_path / "shapes")
    done = run_script("scripts/train.py", *ddp_overrides(manifest, tmp_path / "runs", 2, "trainer.devices=2",
                                                         "name=ddp", "export.enabled=false"))
    runs = sorted((tmp_path / "runs").iterdir())
    assert [r.name for r in runs] == ["ddp"]  # one run directory, not one per rank
    run = runs[0]
    assert done.stdout.count("run directory:") == 2  # rank 0's start and summary lines only: rank 1 prints nothing
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["run"]["devices"] == 2 and metrics["run"]["world_size"] == 2
    assert metrics["run"]["effective_batch_size"] == 8 and metrics["run"]["lr_scaling"] == "none"
    # validation during the fit (early stopping, best.ckpt) scored the 11 val images once each: not 12
    with open(run / "logs" / "metrics.csv", newline="") as f:
        logged = [float(r["val/images"]) for r in csv.DictReader(f) if r.get("val/images")]
    assert logged == [n_val, n_val]
    for side, n in (("val", n_val), ("test", n_test)):
        assert {m["n"] for m in metrics[side].values()} == {n}

    # the same checkpoint evaluated by one process: the same figures, the same per-image probabilities
    config = load_config([run / "config.yaml"], ["trainer.devices=1"])
    data = prepare_data(config)
    loaders = build_loaders(config, data)
    (tmp_path / "one").mkdir()
    single, probs = evaluate_run(run / "checkpoints" / "best.ckpt", data, loaders, tmp_path / "one", cuda=False,
                                 decide=config.decide if config.calibration.enabled else None)  # as fit.train does
    for side in ("val", "test"):
        for task, block in single[side].items():
            assert {k: block[k] for k in FIGURES} == {k: metrics[side][task][k] for k in FIGURES}, (side, task)
    with open(run / "predictions_test.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert len(written) == n_test
    assert [r["path"] for r in written] == [str(Path(data.manifest.paths[i]).resolve()) for i in loaders.test_rows]
    for task in ("shape", "count"):
        columns = [c for c in written[0] if c.startswith(f"{task}.p.")]
        two = np.array([[float(r[c]) for c in columns] for r in written])
        np.testing.assert_allclose(two, probs["test"][task], atol=1e-5)


class Record(L.Callback):
    """What the resumed fit starts from, and each step's learning rate."""

    def __init__(self):
        self.lrs, self.start = [], {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        optimizer = trainer.optimizers[0]
        if not self.start:  # the first step after the restore
            self.start = {"epoch": trainer.current_epoch,
                          "schedule_step": trainer.lr_scheduler_configs[0].scheduler.last_epoch,
                          "adam_steps": {float(s["step"]) for s in optimizer.state.values()},
                          "ema": {k: v.clone() for k, v in module.ema_net.state_dict().items()}}
        self.lrs.append((trainer.current_epoch, batch_idx, optimizer.param_groups[0]["lr"]))


def test_a_two_process_run_resumes_on_one_process_with_its_schedule_continued(tmp_path):
    from mscvision.training.fit import train
    from mscvision.training.module import warmup_cosine

    torch.set_num_threads(1)
    manifest = make_shapes_dataset(tmp_path / "shapes")
    epochs = 4
    overrides = ddp_overrides(manifest, tmp_path / "runs", epochs, "optim.ema_decay=0.5", "export.enabled=false")
    run_script("tests/training/ddp_stop_after.py", "2", *overrides, "trainer.devices=2", "name=cut")
    run = tmp_path / "runs" / "cut"
    cut = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert cut["epoch"] == 1  # two epochs done on two processes
    steps_two = cut["lr_schedulers"][0]["last_epoch"] // 2  # steps per epoch on 2 processes: 9 images each, batch 4

    record = Record()
    result = train(load_config([run / "config.yaml"], ["trainer.devices=1"]), run_dir=run, resume=True,
                   callbacks=(record,))
    steps_one = 18 // 4  # the 18 training images on one process, batch 4, the last incomplete batch dropped
    assert steps_two == 2 and result.metrics["run"]["epochs"] == epochs and result.metrics["run"]["world_size"] == 1
    # the restored state: the epoch counter, the optimizer's steps and the EMA weights the cut run saved
    assert record.start["epoch"] == 2 and record.start["adam_steps"] == {2 * steps_two}
    for key, value in record.start["ema"].items():
        torch.testing.assert_close(value, cut["state_dict"][f"ema_net.{key}"], rtol=0, atol=0)
    # the schedule continues at epoch 2 of the one-process schedule (not at the 2-process step count)
    total, warmup, lr = epochs * steps_one, steps_one, 2e-3
    assert record.start["schedule_step"] == 2 * steps_one
    assert len(record.lrs) == 2 * steps_one
    for epoch, batch, seen in record.lrs:
        assert seen == pytest.approx(lr * warmup_cosine(epoch * steps_one + batch, warmup, total), rel=1e-9)
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == epochs - 1 and last["lr_schedulers"][0]["last_epoch"] == total
    adam_steps = {float(s["step"]) for s in last["optimizer_states"][0]["state"].values()}
    assert adam_steps == {2 * steps_two + 2 * steps_one}


def test_shards_hold_each_item_once_and_reassemble_in_order():
    order = EpochSampler(11, seed=3, shuffle=False)
    shares = [list(Shard(order, 2, equal=False).share(rank)) for rank in (0, 1)]
    assert sorted(shares[0] + shares[1]) == list(range(11)) and [len(s) for s in shares] == [6, 5]
    parts = [{"p": np.array(s, dtype=float)[:, None], "k": (np.array(s),)} for s in shares]
    back = _interleave(parts)
    assert back["p"][:, 0].tolist() == list(range(11)) and back["k"][0].tolist() == list(range(11))
    views = [np.stack([np.array(s), -np.array(s)])[:, :, None] for s in shares]  # (views, items, classes)
    back = _interleave(views, item_axis=1)
    assert back.shape == (2, 11, 1) and back[1, :, 0].tolist() == [-i for i in range(11)]


def test_training_shares_are_disjoint_equal_and_the_one_process_batches_together():
    """With batch_size B/W on W processes, a step's per-rank batches are exactly the one-process batch
    of size B (also under balanced sampling, which draws with replacement)."""
    weights = np.linspace(1, 3, 21)
    for sampler in (EpochSampler(21, 0, shuffle=True), EpochSampler(21, 0, shuffle=True, weights=weights)):
        sampler.set_epoch(5)
        one = list(sampler)
        shares = [list(Shard(sampler, 3, equal=True).share(rank)) for rank in range(3)]
        assert [len(s) for s in shares] == [7, 7, 7]
        for step in range(3):  # B = 6 on one process, 2 per rank on 3
            together = sorted(x for s in shares for x in s[2 * step:2 * step + 2])
            assert together == sorted(one[6 * step:6 * step + 6])


def test_sync_batchnorm_on_cpu_processes_is_refused_by_name_before_the_run_directory(tmp_path, shapes_dataset):
    from mscvision.core.errors import ConfigError
    from mscvision.training.fit import train

    config = load_config(None, [*tiny_overrides(shapes_dataset, tmp_path / "runs"), "trainer.devices=2",
                                "trainer.accelerator=cpu", "trainer.sync_batchnorm=true"])
    with pytest.raises(ConfigError, match="trainer.sync_batchnorm"):
        train(config)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("env", "primary"), [({}, True), ({"LOCAL_RANK": "0", "NODE_RANK": "0"}, True),
                                              ({"RANK": "1"}, False), ({"LOCAL_RANK": "1"}, False),
                                              ({"NODE_RANK": "1"}, False), ({"SLURM_PROCID": "3"}, False)])
def test_which_process_writes_is_read_from_what_the_launcher_set(monkeypatch, env, primary):
    from mscvision.training.distributed import RANK_VARIABLES, launched_as_primary

    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert launched_as_primary() is primary
