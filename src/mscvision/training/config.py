"""Run configuration: frozen dataclasses loaded from YAML, with dotted command-line overrides.

The dataclasses below are THE defaults: ``load_config`` starts every run from ``RunConfig()`` and
layers the given YAML files and overrides on top, so ``--config X`` alone changes only what X names,
and a non-editable install needs no config file at all. ``configs/default.yaml`` lists the same
values, key for key, as a readable example; tests/training/test_config.py fails if the two drift apart.

Unknown keys, values of the wrong type and unknown choices of enumerated keys are rejected with a
message naming the key. The resolved config is saved in the run directory and inside every
checkpoint, so a run rebuilds itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mscvision.core.errors import ConfigError
from mscvision.core.preprocess import PreprocessSpec
from mscvision.synth.labels import DIFFERENTIATION_CLASSES, MORPHOLOGY_CLASSES
from mscvision.synth.render import MODALITIES

RESNETS = ("resnet18", "resnet34", "resnet50")  # model.backbone: built in training/models.py
FEATURE_NETS = ("efficientnet_b0", "mobilenet_v3_large", "convnext_tiny")
BACKBONES = (*RESNETS, *FEATURE_NETS, "tiny")
ACCELERATORS = ("auto", "cpu", "gpu")
STRATEGIES = ("auto", "ddp", "ddp_spawn")  # trainer.strategy: Lightning's names
TRAINER_PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")  # Lightning's
EXPORT_PRECISIONS = ("fp32", "fp16", "int8")
OOD_METHODS = ("knn", "mahalanobis", "mahalanobis_energy")  # the learned OOD scores export can build into the graph
AUGMENT_ON = ("auto", "cpu", "device")  # data.augment_on
AUTO = "auto"  # preprocess.mean / std: measured on the training split, then frozen (training/normalization.py)
REPLACED_SECTIONS = ("tasks",)  # a layer's task set replaces the defaults' (merging would add tasks)


def check_choice(key: str, value: Any, choices: tuple) -> None:
    """One message for every enumerated key: its name, the bad value and the allowed ones."""
    if value not in choices:
        raise ConfigError(f"{key}={value!r}: use one of {', '.join(map(str, choices))}")


@dataclass(frozen=True)
class PreprocessConfig(PreprocessSpec):
    """The config's ``preprocess`` section: a ``PreprocessSpec`` whose ``mean`` / ``std`` may read
    ``auto`` until the run measures them on its training split; checkpoints and models get numbers."""

    mean: tuple[float, ...] | str | None = None
    std: tuple[float, ...] | str | None = None

    def __post_init__(self) -> None:
        auto = {name: None for name in ("mean", "std") if getattr(self, name) == AUTO}
        for name in ("mean", "std"):
            if isinstance(getattr(self, name), str) and name not in auto:
                raise ConfigError(f"preprocess.{name}={getattr(self, name)!r}: use one number per channel, or auto")
        if auto:  # the spec's own checks, on the numbers that are known
            dataclasses.replace(self, **auto)
        else:
            super().__post_init__()

    @property
    def measures(self) -> tuple[str, ...]:
        """The keys still to be measured on the training split: ``mean`` and/or ``std``."""
        return tuple(name for name in ("mean", "std") if getattr(self, name) == AUTO)


@dataclass(frozen=True)
class SyntheticConfig:
    n: int = 3600  # 36 donors: 18 train, 11 val (monitoring and calibration: >= ~1,000 images are needed
    #   to certify 99% accuracy on a useful share, docs/calibration.md), 7 test
    seed: int = 0
    modality: str = "phase"
    bit_depth: int = 8
    size: int = 128
    cache_dir: str = "data/synthetic"  # generated once, reused while synth.json matches

    def __post_init__(self) -> None:
        check_choice("data.synthetic.modality", self.modality, MODALITIES)
        check_choice("data.synthetic.bit_depth", self.bit_depth, (8, 16))


@dataclass(frozen=True)
class DataConfig:
    path: str | None = None  # manifest.csv, folder with one, or class-per-folder tree; None = synthetic
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    val_fraction: float = 0.3  # of the groups; val picks the epoch and calibrates. 0: no val split, every
    #   non-test group trains (needs select: last) but for a calibration-only slice (calibration.holdout_fraction)
    test_fraction: float = 0.2
    split_seed: int = 0
    skip_missing: bool = False  # rows whose image is missing: error (default) or warn-and-skip
    skip_unreadable: bool = False  # images that fail to decode: error (default) or warn-and-skip
    num_workers: int = 2
    cache_images: bool = True  # keep decoded, scaled images in memory (fast epochs on small sets)
    balanced_sampling: bool = False  # draw training images inversely to the first task's class counts
    # where training images are augmented (training/augment.py declares what, once, for both): cpu = per
    # image in the loader workers (albumentations); device = the cached images kept as one tensor on the
    # training device, augmented there in batches by torch ops (training/resident.py); auto = device when
    # training on CUDA with data.cache_images, else cpu
    augment_on: str = "auto"

    def __post_init__(self) -> None:
        check_choice("data.augment_on", self.augment_on, AUGMENT_ON)
        if self.augment_on == "device" and not self.cache_images:
            raise ConfigError("data.augment_on=device keeps the cached images on the device, but data.cache_images "
                              "is false. Fix: data.cache_images: true, or data.augment_on: cpu.")


@dataclass(frozen=True)
class TaskConfig:
    column: str | None = None  # manifest column; default = the task name
    classes: list[str] | None = None  # output order; default = sorted labels found in the data


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "resnet18"
    stem_stride: int = 4  # 4: ImageNet stem (7x7/2 + maxpool); 2: 3x3/2; 1: 3x3/1 for tiny crops
    pretrained: str | None = None  # local .pth of ImageNet weights; never downloaded
    dropout: float = 0.0
    init_from: str | None = None  # run dir or .ckpt to fine-tune from; heads kept where classes match

    def __post_init__(self) -> None:
        check_choice("model.backbone", self.backbone, BACKBONES)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    class_weights: bool = True  # class-frequency weights per task, from the training split
    class_weight_power: float = 1.0  # weight ∝ (1/count)**power: 1 inverse frequency, 0.5 its root
    ema_decay: float = 0.0  # > 0: keep an exponential moving average of the weights; it is what is
    #                         evaluated, checkpointed and exported


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    flips: bool = True
    rot90: bool = True
    affine_degrees: float = 15.0
    affine_scale: float = 0.1  # zoom of ±10%
    brightness_contrast: float = 0.2
    gamma: float = 0.2
    blur_prob: float = 0.2
    noise_std: float = 0.02
    mixup_alpha: float = 0.0  # > 0: mix image pairs in each training batch, weight ~ Beta(a, a)


@dataclass(frozen=True)
class TrainerConfig:
    max_epochs: int = 22
    batch_size: int = 64
    accelerator: str = "auto"  # auto | cpu | gpu
    # Processes: devices per node x num_nodes (DDP: gloo on CPU, nccl on GPUs; README "Training on many GPUs /
    # nodes"). batch_size is per process, so the effective batch is batch_size x devices x num_nodes, and
    # the learning rate is NOT scaled with it (rule "none", recorded in metrics.json run.lr_scaling): to
    # keep a one-device recipe on N processes, divide batch_size by N (the same global batches, see
    # training/distributed.py), or raise optim.lr yourself.
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto (one device: none; several: ddp, or what torchrun / SLURM launched) | ddp | ddp_spawn
    sync_batchnorm: bool = False  # batch-norm statistics over the global batch (GPUs only; torch has no CPU SyncBN)
    precision: str = "auto"  # auto: bf16-mixed on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else 32-true
    channels_last: str = "auto"  # auto (on for CUDA) | true | false
    early_stopping_patience: int = 6
    select: str = "best"  # which weights are evaluated and exported: "best" (highest val balanced
    #   accuracy) or "last" (end of the schedule: for a fixed cosine schedule with EMA when the val
    #   split is a few groups, whose noisy maximum tends to pick a mid-schedule snapshot)
    deterministic: bool = False
    num_threads: int = 0  # torch intra-op threads on CPU; 0 = library default
    limit_train_batches: float = 1.0
    limit_val_batches: float = 1.0
    log_every_n_steps: int = 10
    progress_bar: bool = True
    tta: bool = False  # also report test figures with dihedral (8-way) test-time augmentation

    @property
    def world_size(self) -> int:
        """The number of training processes: devices per node x nodes."""
        return self.devices * self.num_nodes

    def __post_init__(self) -> None:
        check_choice("trainer.accelerator", self.accelerator, ACCELERATORS)
        check_choice("trainer.strategy", self.strategy, STRATEGIES)
        for key in ("devices", "num_nodes"):
            if getattr(self, key) < 1:
                raise ConfigError(f"trainer.{key}={getattr(self, key)}: use a whole number >= 1")
        check_choice("trainer.precision", self.precision, TRAINER_PRECISIONS)
        check_choice("trainer.channels_last", self.channels_last, ("auto", "true", "false"))
        check_choice("trainer.select", self.select, ("best", "last"))


@dataclass(frozen=True)
class ExportConfig:
    enabled: bool = True  # export RUN_DIR/model.onnx at the end of `scripts/train.py`
    precision: str = "fp32"  # fp16 / int8 add that variant beside fp32 when it meets its gate
    tta: bool = False  # the graph itself averages the 8 dihedral views (8x the compute per image): the
    #   station then runs what "test_tta" measured, and that is the model's headline figure

    def __post_init__(self) -> None:
        check_choice("export.precision", self.precision, EXPORT_PRECISIONS)


@dataclass(frozen=True)
class CalibrationConfig:
    enabled: bool = True  # fit one temperature per task and a certified review threshold (training/calibrate.py)
    holdout_fraction: float = 0.15  # with data.val_fraction 0 only: groups held out as the val split (the
    #   same share data.val_fraction would take) for calibration alone; it picks no epoch, stops nothing

    def __post_init__(self) -> None:
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ConfigError(f"calibration.holdout_fraction={self.holdout_fraction}: use a share in (0, 1)")


@dataclass(frozen=True)
class DecideConfig:
    # per task: with probability >= 1 - delta over the calibration draw, the images that get a label are
    # at least target_accuracy accurate (core/selective.py); the rest are `review`
    target_accuracy: float = 0.99
    delta: float = 0.05

    def __post_init__(self) -> None:
        for key in ("target_accuracy", "delta"):
            if not 0.0 < getattr(self, key) < 1.0:
                raise ConfigError(f"decide.{key}={getattr(self, key)}: use a value in (0, 1)")


@dataclass(frozen=True)
class OodConfig:
    """The out-of-distribution gate export builds into the model (export/ood.py, issue 16): a learned
    score inside the graph, calibrated on the val split (groups never trained on)."""

    method: str = "mahalanobis_energy"  # the learned score: mahalanobis_energy (the Mahalanobis distance
    #   plus the energy of the first task's logits, each standardised on the bank: near-OOD AUROC 0.820
    #   vs 0.766 on MitoCheck's held-out classes, README) | mahalanobis (distance to the nearest
    #   first-task class mean, shared covariance) | knn (1 − cosine similarity to the k-th nearest
    #   training feature). Measured on the default model: far-OOD noise AUROC 0.85 / 0.995 (uniform /
    #   Gaussian) for mahalanobis vs kNN's 0.51 / 0.89, both near chance on blur (the image checks' job)
    k: int = 50  # knn: which neighbour (Sun et al. 2022's CIFAR-10 choice); at most the bank size
    alpha: float = 0.05  # the gate's false-alarm rate on in-distribution images: conformal p-values
    #   from the val split's scores; how the image checks and the score share it: runtime/gate.py

    def __post_init__(self) -> None:
        check_choice("ood.method", self.method, OOD_METHODS)
        if not (isinstance(self.k, int) and self.k >= 1):
            raise ConfigError(f"ood.k={self.k!r}: use a whole number >= 1")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"ood.alpha={self.alpha!r}: use a number between 0 and 1 (e.g. 0.05)")


@dataclass(frozen=True)
class RunConfig:
    name: str = "default"
    seed: int = 0
    output_dir: str = "runs"
    # the synthetic data set's tasks, in the class order of its label tables (not sorted)
    tasks: dict[str, TaskConfig] = field(default_factory=lambda: {
        "morphology": TaskConfig("morphology", list(MORPHOLOGY_CLASSES)),
        "differentiation": TaskConfig("differentiation", list(DIFFERENTIATION_CLASSES))})
    data: DataConfig = field(default_factory=DataConfig)
    # 128-px synthetic crops shrunk a little for CPU speed (droplets and granules survive); mean/std
    # centre the percentile-scaled [0, 1] intensities. PreprocessSpec's own defaults (no mean/std)
    # are the artifact contract's, for models that did not record a key; these are the run's.
    # pixel_size_um: the synthetic microscope's nominal 1.3 um/px (synth/dataset.py PIXEL_SIZE_UM), so the
    # model states the scale it was trained at and a station rescales (or doubts) fields of another scale;
    # a layer for other data states its own (configs/mitocheck.yaml: null, the crops carry none)
    preprocess: PreprocessConfig = field(default_factory=lambda: PreprocessConfig(size=(112, 112), mean=(0.5,),
                                                                                  std=(0.25,), pixel_size_um=1.3))
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    decide: DecideConfig = field(default_factory=DecideConfig)
    ood: OodConfig = field(default_factory=OodConfig)

    def __post_init__(self) -> None:
        if self.data.val_fraction == 0 and self.trainer.select != "last":
            raise ConfigError("data.val_fraction=0 leaves no validation split to pick the best epoch from. "
                              "Fix: set trainer.select: last (a fixed schedule), or a val_fraction > 0.")
        if self.export.tta and not self.trainer.tta:
            raise ConfigError("export.tta: the exported model would run dihedral TTA, but nothing measures it. "
                              "Fix: set trainer.tta: true as well.")
        if self.export.tta and self.preprocess.size[0] != self.preprocess.size[1]:
            raise ConfigError(f"export.tta: a 90-degree rotation of a {self.preprocess.size} input changes its "
                              "shape. Fix: a square preprocess.size, or export.tta: false.")

    @property
    def held_out_val_fraction(self) -> float:
        """The share of non-test groups in the val split: data.val_fraction, or with 0 there the
        calibration slice (calibration.holdout_fraction) when calibration is on."""
        if self.data.val_fraction > 0 or not self.calibration.enabled:
            return self.data.val_fraction
        return self.calibration.holdout_fraction

    @property
    def deployed_test_key(self) -> str:
        """The metrics block that measured what the exported graph runs: the TTA pass when it carries TTA."""
        return "test_tta" if self.export.tta else "test"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def load_config(paths: list[str | Path] | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The defaults (``RunConfig()``), then the YAML files deep-merged in order, then ``key.sub=value``
    overrides → a validated ``RunConfig``. A file's ``tasks`` section replaces the default tasks."""
    import yaml

    raw: dict = RunConfig().to_dict()
    for path in [Path(p) for p in paths or []]:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist. Fix: pass --config with a file from configs/.")
        with open(path, encoding="utf-8") as f:
            layer = yaml.safe_load(f) or {}
        if not isinstance(layer, dict):
            raise ConfigError(f"{path}: a config file must be a mapping of sections")
        raw.update({key: layer.pop(key) for key in REPLACED_SECTIONS if key in layer})
        _deep_merge(raw, layer)
    for override in overrides:
        _apply_override(raw, override, yaml)
    return from_dict(RunConfig, raw, "")


def _deep_merge(base: dict, layer: dict) -> None:
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


def _apply_override(raw: dict, override: str, yaml) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not KEY=VALUE (e.g. trainer.max_epochs=5)")
    key, value = override.split("=", 1)
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(value)


def from_dict(cls: type, data: Any, where: str) -> Any:
    """Build a (nested) dataclass from plain data, checking keys and types; ``where`` names the key."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {[_join(where, k) for k in unknown]}; "
                          f"known under {where or 'top level'}: {sorted(names)}")
    values = {k: _coerce(hints[k], v, _join(where, k)) for k, v in data.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from exc


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if isinstance(value, str) and str in inner:  # e.g. preprocess.mean: auto (a list otherwise)
            return value
        return _coerce(inner[0], value, where)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        items = [_coerce(args[0], v, where) for v in value]
        return tuple(items) if origin is tuple else items
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is str and isinstance(value, bool):  # YAML 1.1 reads true/on/yes as a bool
        return "true" if value else "false"
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r} ({type(value).__name__})")
    return value


def save_config(config: RunConfig, path: Path) -> None:
    import yaml

    from mscvision.core.fileio import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
