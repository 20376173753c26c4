"""Config loading: layering, overrides, and errors that name the key."""

import pytest

from mscvision.core.errors import ConfigError
from mscvision.training.config import CONFIG_DIR, load_config


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
    ("trainer.channels_last=sometimes", r"trainer.channels_last='sometimes': use auto, true or false"),
])
def test_bad_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


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
