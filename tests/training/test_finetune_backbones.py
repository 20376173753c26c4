"""Backbones, local pretrained weights, fine-tuning, folder-tree data sets, cross-validation folds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from conftest import make_shapes_dataset, tiny_overrides
from mscvision.core.errors import ConfigError
from mscvision.core.manifest import load_dataset
from mscvision.training.config import load_config
from mscvision.training.crossval import fold_splits
from mscvision.training.fit import train
from mscvision.training.models import BACKBONES, build_backbone


@pytest.mark.parametrize("name", [b for b in BACKBONES if b != "tiny"])
def test_every_backbone_takes_any_channel_count(name):
    stem = 2 if name != "convnext_tiny" else 4
    net = build_backbone(name, in_channels=5, stem_stride=stem).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 5, 64, 64))
    assert out.shape == (2, net.num_features)


def test_pretrained_rgb_weights_are_adapted_to_five_channels(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "imagenet.pth")
    net = build_backbone("resnet18", in_channels=5, stem_stride=4, pretrained=str(tmp_path / "imagenet.pth"))
    rgb = reference.conv1.weight
    assert net.conv1.weight.shape == (64, 5, 7, 7)
    torch.testing.assert_close(net.conv1.weight[:, 2], rgb.mean(dim=1) * 3 / 5)
    torch.testing.assert_close(net.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    # the summed response to a flat image is unchanged by the adaptation
    torch.testing.assert_close(net.conv1.weight.sum(dim=1), rgb.sum(dim=1), rtol=1e-5, atol=1e-5)


def test_pretrained_file_of_another_architecture_is_refused(tmp_path):
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ConfigError, match="does not fit"):
        build_backbone("resnet18", 1, pretrained=str(tmp_path / "r34.pth"))


def test_init_from_keeps_backbone_and_matching_heads_only(tmp_path):
    source = train(load_config(None, tiny_overrides(make_shapes_dataset(tmp_path / "a"), tmp_path / "runs", epochs=1)))
    # a new in-house set: same 'shape' classes, 'count' relabelled to a different class set
    manifest = make_shapes_dataset(tmp_path / "b", seed=1)
    text = manifest.read_text().replace(",one,", ",single,").replace(",two,", ",double,")
    manifest.write_text(text)
    overrides = [*tiny_overrides(manifest, tmp_path / "runs2", epochs=1), f"model.init_from={source.run_dir}",
                 "trainer.max_epochs=0"]
    cfg = load_config(None, overrides)
    from mscvision.training.finetune import init_from_run
    from mscvision.training.module import MscClassifier

    module = MscClassifier(cfg.to_dict(), [{"name": "shape", "classes": ["bar", "disc"], "column": "shape"},
                                           {"name": "count", "classes": ["double", "single"], "column": "count"}])
    fresh_count_head = module.net.heads["count"].weight.clone()
    messages = init_from_run(module, source.run_dir)
    src = torch.load(source.checkpoint, weights_only=False)["state_dict"]
    torch.testing.assert_close(module.net.backbone.features[0].weight, src["net.backbone.features.0.weight"])
    torch.testing.assert_close(module.net.heads["shape"].weight, src["net.heads.shape.weight"])
    torch.testing.assert_close(module.net.heads["count"].weight, fresh_count_head)
    assert any("'count': new" in m for m in messages) and any("'shape': kept" in m for m in messages)


class _Payload:
    """Unpickling this runs ``exec``: what a hostile .ckpt does to whoever loads it carelessly."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def _hostile_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "marker"
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "hyper_parameters": {"config": _Payload(marker)}}, ckpt)
    return ckpt, marker


@pytest.mark.parametrize("target", ["file", "run_dir"])
def test_init_from_refuses_a_checkpoint_that_runs_code(tmp_path, target):
    from mscvision.core.errors import DataError
    from mscvision.training.finetune import init_from_run

    ckpt, marker = _hostile_checkpoint(tmp_path)
    source = ckpt if target == "file" else ckpt.parent.parent
    with pytest.raises(DataError, match="refused to load.*trusted source") as refused:
        init_from_run(None, source)  # refused before the module is touched
    assert str(ckpt) in str(refused.value) and "exec" in str(refused.value)
    assert not marker.exists()


def test_export_refuses_a_checkpoint_that_runs_code(tmp_path, capsys):
    from mscvision.cli import main

    ckpt, marker = _hostile_checkpoint(tmp_path)
    assert main(["export", str(ckpt), "--out", str(tmp_path / "m.onnx"), "--threads", "1"]) == 2
    assert "refused to load" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "m.onnx").exists()


def test_folder_tree_becomes_a_one_task_manifest(tmp_path):
    from mscvision.core.imageio import write_image

    for label in ("round", "long"):
        for i in range(3):
            write_image(tmp_path / "tree" / label / "sub" / f"{i}.png", np.full((8, 8), i, np.uint8))
    manifest, _ = load_dataset(tmp_path / "tree", ["phenotype"])
    assert len(manifest) == 6 and sorted(set(manifest.labels["phenotype"])) == ["long", "round"]
    assert not manifest.has_groups


def test_cross_validation_folds_keep_every_group_on_one_side():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 40, 800).astype(str)
    key = rng.integers(0, 5, 800)
    splits = fold_splits(key, groups, k=5, seed=0, val_fraction=0.1)
    test_of = np.full(800, -1)
    for fold, split in enumerate(splits):
        for g in np.unique(groups):
            assert len(set(split[groups == g])) == 1, (fold, g)
        assert (split == "val").any() and (split == "train").any()
        test_of[split == "test"] = fold
    assert (test_of >= 0).all()  # every row is out-of-fold exactly once


def test_cross_validation_without_validation_folds_trains_on_the_rest():
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 20, 300).astype(str)
    splits = fold_splits(rng.integers(0, 3, 300), groups, k=4, seed=0, val_fraction=0.0)
    for split in splits:
        assert set(split) == {"train", "test"}


def test_cross_validation_pools_both_setups_and_headlines_the_deployed_one(tmp_path):
    """Pooled out-of-fold figures equal the folds' own figures summed (confusion matrices add up)."""
    from mscvision.training.crossval import cross_validate

    manifest = make_shapes_dataset(tmp_path / "shapes", n=36, groups=9)
    overrides = [*tiny_overrides(manifest, tmp_path / "runs", epochs=1), "data.val_fraction=0",
                 "trainer.select=last", "trainer.tta=true", "export.tta=true"]
    report = cross_validate(load_config(None, overrides), k=3)
    saved = json.loads((Path(report["dir"]) / "crossval.json").read_text())
    assert saved["deployed"] == "tta" and {"pooled", "pooled_tta"} <= set(saved)
    for pooled_key, fold_key in (("pooled", "test"), ("pooled_tta", "test_tta")):
        for task in ("shape", "count"):
            summed = sum(np.array(f[fold_key][task]["confusion_matrix"]) for f in saved["folds"])
            assert np.array_equal(np.array(saved[pooled_key][task]["confusion_matrix"]), summed)
            assert saved[pooled_key][task]["n"] == 36
    for task in ("shape", "count"):  # pooled calibration and abstention of the deployed (TTA) pass
        trust = saved["pooled_tta"][task]
        assert {"before", "after"} == set(trust["calibration"]) and trust["calibration"]["after"]["n"] == 36
        labelled = sum(f["abstention"][task]["test"]["n_labelled"] for f in saved["folds"])
        assert trust["abstention"]["n_labelled"] == labelled  # each fold's own threshold on its own test images
    tta_wf1 = [f["test_tta"]["shape"]["weighted_f1"] for f in saved["folds"]]
    assert saved["spread"]["shape"]["weighted_f1"]["min"] == min(tta_wf1)  # spread of the deployed setup


def test_cross_validation_script_calibrates_exports_and_reports_every_fold(tmp_path):
    """scripts/cross_validate.py by default: each fold calibrated on its calibration slice, exported,
    and judged from its ONNX file on its own test groups (FOLD_DIR/evaluation/)."""
    import subprocess
    import sys

    from conftest import REPO

    manifest = make_shapes_dataset(tmp_path / "shapes", n=36, groups=9)
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "cross_validate.py"), "--folds", "3",
                           *tiny_overrides(manifest, tmp_path / "runs", epochs=1), "data.val_fraction=0",
                           "trainer.select=last"], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    cv_dir = next((tmp_path / "runs").iterdir())
    report = json.loads((cv_dir / "crossval.json").read_text())
    assert {"calibration", "abstention"} <= set(report["pooled"]["shape"])
    for fold in range(3):
        fold_dir = cv_dir / f"fold{fold}"
        assert (fold_dir / "calibration.json").is_file() and (fold_dir / "model.onnx").is_file()
        evaluation = json.loads((fold_dir / "evaluation" / "metrics.json").read_text())
        fold_metrics = json.loads((fold_dir / "metrics.json").read_text())
        for task in ("shape", "count"):  # the file alone reproduces the fold's test figures
            assert evaluation["tasks"][task]["metrics"]["confusion_matrix"] == \
                fold_metrics["test"][task]["confusion_matrix"]
        assert (fold_dir / "evaluation" / "report.html").is_file()
    assert "calibration (pooled): ECE" in done.stdout
