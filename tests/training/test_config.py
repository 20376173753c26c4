"""Config loading: layering, overrides, and errors that name the key."""

import subprocess
import shutil
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")  # the train extra; a bare station install skips these tests

from mscvision.core.errors import ConfigError  # noqa: E402
from mscvision.training.config import RunConfig, load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "configs"


def test_default_config_loads_and_matches_tasks():
    cfg = load_config()
    assert set(cfg.tasks) == {"morphology", "differentiation"}
    assert cfg.preprocess.size == (112, 112)


def test_gpu_layer_overrides_only_what_it_names():
    cfg = load_config([CONFIG_DIR / "default.yaml", CONFIG_DIR / "gpu.yaml"])
    assert cfg.preprocess.size == (128, 128) and cfg.trainer.batch_size == 256
    assert cfg.preprocess.mean == (0.5,)  # kept from default.yaml
    assert cfg.data.synthetic.n == 6000 and cfg.data.synthetic.size == 128


def test_dotted_overrides_are_typed():
    cfg = load_config(None, ["model.backbone=resnet34", "trainer.max_epochs=5", "optim.lr=1e-3"])
    assert cfg.model.backbone == "resnet34" and cfg.trainer.max_epochs == 5 and cfg.optim.lr == 0.001


@pytest.mark.parametrize("override,message", [
    ("trainer.max_epoch=5", r"unknown config key\(s\) \['trainer.max_epoch'\]"),
    ("trainer.max_epochs=five", r"trainer.max_epochs: expected int, got 'five'"),
    ("preprocess.intensity=zscore", r"preprocess.intensity='zscore'"),
    ("data.val_fraction=0", r"data.val_fraction=0 leaves no validation split.*trainer.select: last"),
    ("export.tta=true", r"export.tta: .*Fix: set trainer.tta: true"),
    ("optim=3", r"optim: expected a mapping"),
    ("max_epochs", r"is not KEY=VALUE"),
    ("trainer.channels_last=sometimes", r"trainer.channels_last='sometimes': use one of auto, true, false"),
    ("trainer.accelerator=tpu", r"trainer.accelerator='tpu': use one of auto, cpu, gpu"),
    ("trainer.precision=fp8", r"trainer.precision='fp8': use one of auto, 32-true, bf16-mixed"),
    ("trainer.select=middle", r"trainer.select='middle': use one of best, last"),
    ("export.precision=int4", r"export.precision='int4': use one of fp32, fp16, int8"),
    ("data.synthetic.modality=xray", r"data.synthetic.modality='xray': use one of phase, fluorescence"),
    ("preprocess.fit=stretch", r"preprocess.fit='stretch'"),
    ("data.synthetic.bit_depth=12", r"data.synthetic.bit_depth=12: use one of 8, 16"),
    ("model.backbone=resnet19", r"model.backbone='resnet19': use one of resnet18, resnet34, resnet50, efficientnet_b0"),
    ("ood.method=energy", r"ood.method='energy': use one of knn, mahalanobis"),
    ("ood.k=0", r"ood.k=0: use a whole number >= 1"),
    ("ood.alpha=1.5", r"ood.alpha=1.5: use a number between 0 and 1"),
    ("data.augment_on=gpu", r"data.augment_on='gpu': use one of auto, cpu, device"),
])
def test_bad_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_device_augmentation_needs_the_image_cache():
    with pytest.raises(ConfigError, match=r"data.augment_on=device .* data.cache_images is false"):
        load_config(None, ["data.augment_on=device", "data.cache_images=false"])
    assert load_config(None, ["data.cache_images=false"]).data.augment_on == "auto"  # auto then means cpu


def test_yaml_booleans_read_as_words_for_string_keys():
    # YAML 1.1 turns an unquoted true/on into a bool; a string-valued key takes it as the word
    assert load_config(None, ["trainer.channels_last=true"]).trainer.channels_last == "true"
    assert load_config(None, ["trainer.channels_last=off"]).trainer.channels_last == "false"


def test_hash_changes_with_config():
    assert load_config().hash() != load_config(None, ["seed=1"]).hash()


def test_export_tta_needs_a_square_input():
    with pytest.raises(ConfigError, match=r"export.tta: a 90-degree rotation .* changes its shape"):
        load_config(None, ["trainer.tta=true", "export.tta=true", "preprocess.size=[32, 48]"])
    assert load_config(None, ["trainer.tta=true", "export.tta=true"]).export.tta


def _keys(tree: dict, prefix: str = "") -> set[str]:
    """Dotted keys of a nested mapping (task entries included: they are keys of the defaults too)."""
    keys = set()
    for key, value in tree.items():
        keys |= _keys(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {f"{prefix}{key}"}
    return keys


def test_default_yaml_lists_every_default_with_its_value():
    # one source of defaults: the dataclasses; default.yaml is their listing and may not drift
    listed = yaml.safe_load((CONFIG_DIR / "default.yaml").read_text())
    assert _keys(listed) == _keys(RunConfig().to_dict())
    assert load_config([CONFIG_DIR / "default.yaml"]) == RunConfig() == load_config()


def test_ood_gate_defaults_are_listed_and_overridable():
    listed = yaml.safe_load((CONFIG_DIR / "default.yaml").read_text())["ood"]
    assert listed == RunConfig().to_dict()["ood"] and listed["alpha"] == 0.05
    assert RunConfig().ood.method == "mahalanobis_energy"  # measured the better score (README, the OOD gate)
    cfg = load_config(None, ["ood.method=knn", "ood.k=10", "ood.alpha=0.1"])
    assert (cfg.ood.method, cfg.ood.k, cfg.ood.alpha) == ("knn", 10, 0.1)


def test_a_layer_alone_starts_from_the_defaults(tmp_path):
    assert load_config([CONFIG_DIR / "gpu.yaml"]) == load_config([CONFIG_DIR / "default.yaml", CONFIG_DIR / "gpu.yaml"])
    layer = tmp_path / "short.yaml"
    layer.write_text("trainer: {max_epochs: 3}\npreprocess: {size: [64, 64]}\n")
    cfg = load_config([layer])
    assert cfg.trainer.max_epochs == 3 and cfg.preprocess.size == (64, 64)
    assert cfg.preprocess.mean == (0.5,) and cfg.trainer.batch_size == 64  # the rest: the defaults


def test_a_layers_tasks_replace_the_default_tasks(tmp_path):
    layer = tmp_path / "real.yaml"
    layer.write_text("tasks: {phenotype: {column: label}}\n")
    assert set(load_config([layer]).tasks) == {"phenotype"}
    assert set(load_config([CONFIG_DIR / "mitocheck.yaml"]).tasks) == {"phenotype"}


def test_defaults_load_from_an_installed_copy_run_elsewhere(tmp_path):
    # a non-editable install has no configs/ beside the package: the defaults must not need it
    site = tmp_path / "site"
    shutil.copytree(REPO / "src" / "mscvision", site / "mscvision", ignore=shutil.ignore_patterns("__pycache__"))
    work = tmp_path / "elsewhere"
    work.mkdir()
    code = ("import mscvision.training.config as c; cfg = c.load_config(); "
            "assert c.__file__.startswith(%r); print(cfg.trainer.max_epochs, cfg.preprocess.size)" % str(site))
    result = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True,
                            env={"PYTHONPATH": str(site), "PATH": ""}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["22", "(112,", "112)"]


def test_resume_refuses_a_config_file_it_would_ignore(tmp_path):
    import argparse

    from mscvision.commands.train import add_train_arguments, run_train

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--resume", str(tmp_path), "--config", str(CONFIG_DIR / "default.yaml")])
    with pytest.raises(ConfigError, match=r"--resume uses the run's saved config\.yaml; pass overrides only"):
        run_train(args)  # used to resume (or fail on the missing checkpoint) with --config dropped
