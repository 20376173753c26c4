"""Training end to end on a tiny generated data set: run directory, resume, bad input, augmentation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_shapes_dataset, tiny_overrides
from ddp_stop_after import StopAfter  # simulates an interruption: stops cleanly after N epochs, checkpoints saved
from mscvision.cli import main
from mscvision.core.preprocess import PreprocessSpec
from mscvision.core.tasks import Task
from mscvision.training.augment import build_train_augment
from mscvision.training.config import AugmentConfig, load_config
from mscvision.training.dataset_setup import class_weights
from mscvision.training.data import ImageSet
from mscvision.training.fit import train

TASK_KEYS = {"accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "n", "per_class"}


def test_run_directory_and_metrics_schema(tmp_path, shapes_dataset):
    result = train(load_config(None, tiny_overrides(shapes_dataset, tmp_path / "runs")))
    run = result.run_dir
    for name in ("config.yaml", "split.csv", "metrics.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt",
                 "logs/metrics.csv", "confusion_test_shape.png", "confusion_val_count.png"):
        assert (run / name).is_file(), name
    assert list((run / "logs").glob("events.out.tfevents*"))
    metrics = json.loads((run / "metrics.json").read_text())
    for side in ("val", "test"):
        assert set(metrics[side]) == {"shape", "count"}
        assert TASK_KEYS <= set(metrics[side]["shape"])
    # the held-out groups in split.csv never meet the training groups
    sides = {}
    with open(run / "split.csv", newline="") as f:
        for row in csv.DictReader(f):
            assert Path(row["path"]).is_absolute()
            sides.setdefault(row["group"], set()).add(row["split"])
    assert all(len(s) == 1 for s in sides.values())
    assert metrics["run"]["data_manifest"]["sha256"] and metrics["run"]["data_manifest"]["rows"] == 48
    # the config travels inside the checkpoint as plain values: the weights-only loader reads it back
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert isinstance(ckpt["hyper_parameters"]["config"], dict)
    assert list(ckpt["hyper_parameters"]["config"]["preprocess"]["size"]) == [32, 32]
    from mscvision.training.config import RunConfig
    from mscvision.training.run_files import load_classifier

    module = load_classifier(run / "checkpoints" / "best.ckpt")  # torch.load(weights_only=True) inside
    assert isinstance(module.config, RunConfig) and module.config.hash() == metrics["run"]["config_hash"]
    assert [t.name for t in module.tasks] == ["shape", "count"] and isinstance(module.tasks[0], Task)


def test_select_last_evaluates_and_exports_the_final_weights(tmp_path, shapes_dataset):
    from mscvision.training.run_files import locate_run
    from mscvision.training.evaluate import predict_probabilities
    from mscvision.training.module import MscClassifier

    result = train(load_config(None, [*tiny_overrides(shapes_dataset, tmp_path / "runs"), "trainer.select=last"]))
    last = result.run_dir / "checkpoints" / "last.ckpt"
    assert not (result.run_dir / "checkpoints" / "best.ckpt").exists()
    assert result.checkpoint == last and result.metrics["run"]["checkpoint"] == "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == 1  # the final epoch's state
    assert locate_run(result.run_dir).checkpoint == last  # export takes the same weights
    # the reported test figures are those of the final weights
    model = MscClassifier.load_from_checkpoint(last, map_location="cpu")
    rows = result.test_rows
    paths = [Path(line.split(",")[0]) for line in (result.run_dir / "predictions_test.csv").read_text().splitlines()[1:]]
    probs = predict_probabilities(model, [(torch.stack([ImageSet(paths, {}, model.config.preprocess)[i][0]
                                                        for i in range(len(paths))]), None)])
    # before its temperature (the calibrated deployed pass is checked against the graph in tests/export)
    np.testing.assert_allclose(probs["shape"], result.test_uncalibrated_probs["shape"], atol=1e-5)
    assert len(rows) == len(paths)


def test_build_loaders_returns_the_loaders_their_rows_and_the_scan(tmp_path, shapes_dataset):
    import dataclasses

    from mscvision.training.dataset_setup import prepare_data
    from mscvision.training.loaders import Loaders, build_loaders

    config = load_config(None, tiny_overrides(shapes_dataset, tmp_path / "runs"))
    data = prepare_data(config)
    loaders = build_loaders(config, data)
    assert isinstance(loaders, Loaders) and loaders.skipped == []
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaders.train = None
    for side in ("train", "val", "test"):
        np.testing.assert_array_equal(loaders.rows(side), data.indices(side))  # every image readable here
        assert len(loaders.loader(side).dataset) == len(loaders.rows(side))
    assert len(loaders.scan.keep) == 48


def test_every_run_or_checkpoint_argument_fails_the_same_way_without_a_checkpoint(tmp_path, shapes_dataset):
    """Export, fine-tuning, resume and the benchmark take a run directory through one resolver: the
    same error type and fix when it holds no checkpoint (they used to raise three different ones)."""
    from mscvision.benchmarks.run import benchmark_model
    from mscvision.export import export_run
    from mscvision.training.finetune import init_from_run
    from mscvision.training.run_files import NoCheckpointError

    empty = tmp_path / "not-a-run"
    (empty / "checkpoints").mkdir(parents=True)
    config = load_config(None, tiny_overrides(shapes_dataset, tmp_path / "runs"))
    calls = {"export": lambda: export_run(empty), "init_from": lambda: init_from_run(None, empty),
             "resume": lambda: train(config, run_dir=empty, resume=True),
             "benchmark": lambda: benchmark_model(empty, 1, True, tmp_path / "bench")}
    for name, call in calls.items():
        with pytest.raises(NoCheckpointError, match=r"no checkpoint there .*Fix: pass a run directory") as error:
            call()
        assert str(empty) in str(error.value), name
        assert error.value.exit_code == 2
    assert not (empty / "config.yaml").exists()  # resume refused before it wrote anything


def test_a_second_run_never_overwrites_the_first(tmp_path, shapes_dataset):
    cfg = load_config(None, tiny_overrides(shapes_dataset, tmp_path / "runs", epochs=1))
    first, second = train(cfg).run_dir, train(cfg).run_dir
    assert first != second and first.is_dir() and second.name == f"{first.name}-2"


def test_unknown_labels_are_masked_from_the_loss(tmp_path):
    manifest = make_shapes_dataset(tmp_path / "partial", unknown_every=3)
    result = train(load_config(None, tiny_overrides(manifest, tmp_path / "runs", epochs=1)))
    n_known = sum(1 for line in manifest.read_text().splitlines()[1:] if line.split(",")[2])
    counted = sum(result.metrics[s]["count"]["n"] for s in ("val", "test"))
    assert counted < sum(result.metrics[s]["shape"]["n"] for s in ("val", "test"))
    assert counted <= n_known


def _weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def test_class_weights_follow_the_count_power_with_mean_one_over_samples():
    # 6 of class 0, 2 of class 1, none of class 2, one unknown label (not counted)
    task = Task(name="t", column="t", classes=("a", "b", "c"))
    targets = {"t": np.array([0, 0, 0, 0, 0, 0, 1, 1, -1])}
    rows = np.arange(9)
    inverse = class_weights(targets, [task], rows)["t"]
    root = class_weights(targets, [task], rows, power=0.5)["t"]
    # by hand: raw (1/6, 1/2), scaled so (6*w0 + 2*w1) / 8 = 1
    np.testing.assert_allclose(inverse[:2], [8 / 12, 8 / 4])
    np.testing.assert_allclose(root[:2], np.array([6 ** -0.5, 2 ** -0.5]) * 8 / (6 ** 0.5 + 2 ** 0.5))
    assert root[1] / root[0] == pytest.approx(3 ** 0.5)  # the square root of the count ratio 3
    assert class_weights(targets, [task], rows, power=0.0)["t"][:2] == pytest.approx([1.0, 1.0])
    assert class_weights(targets, [task], np.array([8]))["t"] == [0.0, 0.0, 0.0]  # no known label


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, shapes_dataset):
    torch.set_num_threads(1)
    overrides = [*tiny_overrides(shapes_dataset, tmp_path / "runs", epochs=4), "trainer.deterministic=true",
                 "trainer.early_stopping_patience=100"]
    cfg = load_config(None, overrides)
    full = train(cfg)
    cut = train(cfg, callbacks=(StopAfter(2),))
    assert torch.load(cut.run_dir / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1
    resumed = train(cfg, run_dir=cut.run_dir, resume=True)
    a, b = _weights(full.run_dir), _weights(resumed.run_dir)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert full.metrics["test"] == resumed.metrics["test"]


def test_sixteen_bit_images_survive_augmentation():
    rng = np.random.default_rng(0)
    image = rng.integers(1000, 60000, (32, 32, 1), dtype=np.uint16)
    spec = PreprocessSpec(intensity="fixed", size=(32, 32))
    augment = build_train_augment(AugmentConfig(affine_degrees=0.0, affine_scale=0.0))
    dataset = ImageSet(["x.tif"], {"t": np.array([0])}, spec, augment,
                       cached=[(image.astype(np.float32) / 65535)], seed=0)
    x, _ = dataset[0]
    values = x.numpy().ravel()
    assert x.dtype == torch.float32
    assert len(np.unique(values)) > 256  # not squeezed through 8 bits
    assert 0.0 <= values.min() and values.max() <= 1.0 and values.std() > 0.1


def test_augmentation_is_reproducible_per_epoch_and_sample():
    spec = PreprocessSpec(intensity="fixed", size=(16, 16))
    image = np.random.default_rng(1).random((16, 16, 1), dtype=np.float32)
    dataset = ImageSet(["a.png"], {"t": np.array([0])}, spec, build_train_augment(AugmentConfig()), cached=[image])
    first, again, other_epoch = dataset[5][0], dataset[5][0], dataset[6][0]  # key = epoch * n + index
    assert torch.equal(first, again) and not torch.equal(first, other_epoch)


# --- bad input: one clear line naming the file, row or key; exit codes per docs/architecture.md; no traceback ---

def _train_cli(capsys, manifest: Path, tmp_path: Path, *extra: str) -> tuple[int, str]:
    code = main(["train", *tiny_overrides(manifest, tmp_path / "runs", epochs=1), *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _edit_manifest(manifest: Path, row: int, column: int, value: str) -> None:
    lines = manifest.read_text().splitlines()
    cells = lines[row].split(",")
    cells[column] = value
    lines[row] = ",".join(cells)
    manifest.write_text("\n".join(lines) + "\n")


def test_corrupt_image_is_named(tmp_path, capsys, shapes_dataset):
    (shapes_dataset.parent / "images" / "img004.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    code, err = _train_cli(capsys, shapes_dataset, tmp_path)
    assert code == 3 and "img004.png: cannot be decoded" in err and "skip_unreadable" in err


def test_corrupt_image_can_be_skipped_and_counted(tmp_path, capsys, shapes_dataset):
    (shapes_dataset.parent / "images" / "img004.png").write_text("not an image")
    code = main(["train", *tiny_overrides(shapes_dataset, tmp_path / "runs", epochs=1), "data.skip_unreadable=true"])
    assert code == 0
    metrics = json.loads(next((tmp_path / "runs").glob("*/metrics.json")).read_text())
    assert len(metrics["run"]["skipped_images"]) == 1 and "img004.png" in metrics["run"]["skipped_images"][0]
    split = (next((tmp_path / "runs").glob("*/split.csv"))).read_text()
    assert next(line for line in split.splitlines() if "img004.png" in line).split(",")[2] == "excluded"
    # the train command ends with the exported model judged on the test groups, as a station runs it
    evaluation = json.loads(next((tmp_path / "runs").glob("*/evaluation/metrics.json")).read_text())
    for task in ("shape", "count"):
        assert evaluation["tasks"][task]["metrics"]["confusion_matrix"] == metrics["test"][task]["confusion_matrix"]
    assert "gradcam" in next((tmp_path / "runs").glob("*/evaluation/report.html")).read_text().lower()


def test_missing_file_names_the_row(tmp_path, capsys, shapes_dataset):
    _edit_manifest(shapes_dataset, 3, 0, "images/nope.png")
    code, err = _train_cli(capsys, shapes_dataset, tmp_path)
    assert code == 2 and "manifest.csv:4: image 'images/nope.png' does not exist" in err


def test_unknown_label_names_row_label_and_task(tmp_path, capsys, shapes_dataset):
    _edit_manifest(shapes_dataset, 5, 1, "triangle")
    code, err = _train_cli(capsys, shapes_dataset, tmp_path, "tasks.shape.classes=[disc, bar]")
    assert code == 2 and "manifest.csv:6: label 'triangle' is not a class of task 'shape'" in err


def test_wrong_channel_count_is_named(tmp_path, capsys, shapes_dataset):
    from mscvision.core.imageio import write_image

    write_image(shapes_dataset.parent / "images" / "img007.png", (np.zeros((32, 32, 3)) + [0, 50, 200]).astype(np.uint8))
    code, err = _train_cli(capsys, shapes_dataset, tmp_path)
    assert code == 3 and "img007.png: has 3 channel(s); the model expects 1" in err


def test_empty_data_set(tmp_path, capsys, shapes_dataset):
    shapes_dataset.write_text("path,shape,count,group\n")
    code, err = _train_cli(capsys, shapes_dataset, tmp_path)
    assert code == 2 and "no usable rows" in err


def test_bad_config_value_is_named(tmp_path, capsys, shapes_dataset):
    code, err = _train_cli(capsys, shapes_dataset, tmp_path, "trainer.batch_size=big")
    assert code == 2 and "trainer.batch_size: expected int" in err


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")
def test_mixup_trains_on_mixed_pairs_against_both_label_sets(tmp_path):
    from mscvision.core.tasks import IGNORE_INDEX
    from mscvision.training.module import MscClassifier

    cfg = load_config(None, [*tiny_overrides(tmp_path / "m.csv", tmp_path / "runs", epochs=1), "augment.mixup_alpha=0.4"])
    module = MscClassifier(cfg.to_dict(), [{"name": "shape", "classes": ["bar", "disc"], "column": "shape"}]).train()
    x = torch.randn(6, cfg.preprocess.in_channels, 32, 32)
    targets = {"shape": torch.tensor([0, 1, 0, 1, IGNORE_INDEX, 1])}
    seen = []
    module.net.register_forward_pre_hook(lambda net, args: seen.append(args[0].clone()))

    torch.manual_seed(3)
    loss = module.training_step((x, targets), 0)
    torch.manual_seed(3)  # the same draws, by hand
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    perm = torch.randperm(6)
    torch.testing.assert_close(seen[0], lam * x + (1 - lam) * x[perm])
    _, logits = module.net(seen[0])
    expected = (lam * module.multitask_loss(logits, targets)
                + (1 - lam) * module.multitask_loss(logits, {"shape": targets["shape"][perm]}))
    torch.testing.assert_close(loss, expected)
    assert not torch.equal(perm, torch.arange(6)) and 0 < lam < 1


def test_no_validation_split_trains_on_every_non_test_group(tmp_path, shapes_dataset):
    """data.val_fraction 0 with a fixed schedule (and no calibration): no val rows, no val figures, the
    rest all trains."""
    overrides = [*tiny_overrides(shapes_dataset, tmp_path / "runs", epochs=1), "data.val_fraction=0",
                 "trainer.select=last", "calibration.enabled=false"]
    result = train(load_config(None, overrides))
    with open(result.run_dir / "split.csv", newline="") as f:
        sides = [row["split"] for row in csv.DictReader(f)]
    assert "val" not in sides and sides.count("test") == len(result.test_rows) > 0
    assert sides.count("train") == 48 - sides.count("test")
    assert "val" not in result.metrics and set(result.metrics["test"]) == {"shape", "count"}
    assert "val" not in result.metrics["setup"] and result.metrics["run"]["checkpoint"] == "last.ckpt"


def test_no_val_split_takes_a_calibration_slice_that_trains_nothing_and_picks_nothing(tmp_path, shapes_dataset):
    """data.val_fraction 0 with calibration on: whole groups are held out as a calibration-only val
    split (never trained on, never tested, not monitored), and the run is calibrated on them."""
    overrides = [*tiny_overrides(shapes_dataset, tmp_path / "runs", epochs=1), "data.val_fraction=0",
                 "trainer.select=last", "calibration.holdout_fraction=0.25"]
    result = train(load_config(None, overrides))
    with open(result.run_dir / "split.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    sides = {side: {r["group"] for r in rows if r["split"] == side} for side in ("train", "val", "test")}
    assert sides["val"] and not sides["val"] & (sides["train"] | sides["test"])
    calibration = json.loads((result.run_dir / "calibration.json").read_text())
    assert set(calibration["tasks"]) == {"shape", "count"}
    block = result.metrics["calibration"]["shape"]
    assert block["fitted_on"].startswith(f"val: {sum(r['split'] == 'val' for r in rows)} images")
    assert block["temperature"] == calibration["tasks"]["shape"]["temperature"]
    assert {"before", "after"} == set(block["test"]) and "certificate" in result.metrics["abstention"]["shape"]
    logged = (result.run_dir / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert "val" not in logged  # the slice was not validated on during training


def test_auto_precision_uses_bf16_only_where_the_hardware_has_it(monkeypatch, capsys):
    from mscvision.training import fit

    monkeypatch.setattr(fit, "cpu_flags", lambda: ["avx2", "fma"])
    assert fit._precision("auto", cuda=False) == "32-true"  # emulated bf16 would be far slower
    assert fit._precision("auto", cuda=True) == "bf16-mixed"
    assert fit._precision("bf16-mixed", cuda=False) == "bf16-mixed"  # asked for: honoured, with a warning
    assert "without AVX512-BF16/AMX" in capsys.readouterr().out
    monkeypatch.setattr(fit, "cpu_flags", lambda: ["avx2", "avx512f", "avx512_bf16"])
    assert fit._precision("auto", cuda=False) == "bf16-mixed"
    assert fit._precision("32-true", cuda=False) == "32-true" and not capsys.readouterr().out


def test_a_held_out_side_whose_every_image_was_skipped_is_refused_by_name(tmp_path, shapes_dataset):
    """Every test image unreadable: a DataError before the first epoch, not a KeyError in the
    split table (sides were taken from the counted rows) or in evaluation (an empty test side)."""
    from mscvision.core.errors import DataError
    from mscvision.training.dataset_setup import prepare_data
    from mscvision.training.fit import show_split

    data = prepare_data(load_config(None, tiny_overrides(shapes_dataset, tmp_path / "runs")))
    usable = np.flatnonzero(data.split != "test")  # as if the scan had skipped every test image
    with pytest.raises(DataError, match=r"every test image was skipped as unreadable: the run would have no test"):
        show_split(data, usable, tmp_path)


def test_recalibrate_an_existing_run_from_its_checkpoint_and_split(tmp_path, shapes_dataset):
    """A run trained without calibration is calibrated afterwards on its own val groups: the same test
    figures (same checkpoint, same split), plus calibration.json and the metrics blocks."""
    from mscvision.training.recalibrate import recalibrate

    result = train(load_config(None, [*tiny_overrides(shapes_dataset, tmp_path / "runs", epochs=1),
                                      "calibration.enabled=false"]))
    assert "calibration" not in result.metrics and not (result.run_dir / "calibration.json").exists()
    metrics = recalibrate(result.run_dir, ["calibration.enabled=true", "decide.target_accuracy=0.9"])
    saved = json.loads((result.run_dir / "metrics.json").read_text())
    assert saved["calibration"].keys() == {"shape", "count"} and saved["run"] == result.metrics["run"]
    assert saved["abstention"]["shape"]["certificate"]["target_accuracy"] == 0.9
    assert json.loads((result.run_dir / "calibration.json").read_text())["decide"]["target_accuracy"] == 0.9
    for task in ("shape", "count"):  # argmax of a single pass is unchanged by a temperature
        assert metrics["test"][task]["confusion_matrix"] == result.metrics["test"][task]["confusion_matrix"]


def test_a_task_without_val_labels_is_left_uncalibrated_not_a_crash():
    """A partly labelled manifest can leave a task with no labelled val image: that task gets no
    temperature and no certificate (every image reviewed); the others are calibrated as usual."""
    from mscvision.core.tasks import Task
    from mscvision.training.calibrate import fit_calibration
    from mscvision.training.config import DecideConfig

    rng = np.random.default_rng(0)
    views = {"a": np.log(rng.dirichlet([1, 1], (1, 50))), "b": np.log(rng.dirichlet([1, 1], (1, 50)))}
    val = {"a": rng.integers(0, 2, 50), "b": np.full(50, -1)}
    result = fit_calibration(views, val, views, val, [Task("a", ("x", "y"), "a"), Task("b", ("x", "y"), "b")],
                             DecideConfig(0.9, 0.05))
    assert result.settings["tasks"]["b"]["abstention"]["certified"] is False
    assert "no val image has a b label" in result.settings["tasks"]["b"]["abstention"]["reason"]
    assert "a" in result.metrics["calibration"] and "b" not in result.metrics["calibration"]


def test_an_uncalibrated_run_exports_a_certificate_that_reviews_everything(tmp_path):
    from mscvision.core.tasks import Task
    from mscvision.export.pipeline import task_settings

    settings = task_settings(tmp_path, [Task("a", ("x", "y"), "a")])  # no calibration.json
    assert settings["a"]["temperature"] == 1.0 and settings["a"]["abstention"]["certified"] is False
