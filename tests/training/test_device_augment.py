"""The training augmentation: one declaration (training/augment.py), two executors (albumentations
on the CPU, device_augment.BatchAugment in torch), and the device path's loader (training/resident.py).

Distribution checks compare the two paths' real pipelines, seeded as training seeds them, on n
samples each: an apply rate must lie within 4 standard errors of the declared p in both; a
continuous parameter's two samples must pass a two-sample Kolmogorov-Smirnov test at alpha ~ 0.001
(D < 1.95 sqrt(2 / n)), lie in the declared range and reach within 5% of both its ends. At n 3000
a range off by a third (rotate ±10° for ±15°: D 0.17 against 0.05) or p 0.3 for 0.5 (7 standard
errors) fails; every seed is fixed, so the tests are deterministic.
"""

from __future__ import annotations

import dataclasses
import typing

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from conftest import make_shapes_dataset, tiny_overrides
from mscvision.core.errors import ConfigError
from mscvision.training.augment import (Affine, BrightnessContrast, Flip, GaussianBlur, GaussNoise, Gamma, Rot90,
                                        Transform, albumentations_compose, apply_augment, augment_plan)
from mscvision.training.config import AugmentConfig, load_config
from mscvision.training.device_augment import BatchAugment, affine, draw_params

PLAN = augment_plan(AugmentConfig())  # the defaults: what every run trains with unless configured


def cpu_seed(seed: int, epoch: int, index: int) -> int:
    """The CPU path's per-sample seed (data.ImageSet)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def cpu_run(plan, image: np.ndarray, n: int) -> tuple[np.ndarray, list[list[dict]]]:
    """n samples of the real CPU pipeline on ``image`` (H, W, C): outputs and each transform's params."""
    compose = albumentations_compose(plan)
    outs, params = [], []
    for i in range(n):
        outs.append(apply_augment(compose, image, cpu_seed(0, 0, i)))
        params.append([dict(t.params) for t in compose.transforms])
    return np.stack(outs), params


def device_run(plan, image: np.ndarray, n: int, seed: int = 0, epoch: int = 0) -> np.ndarray:
    """n samples of the device path (here on the CPU) on ``image``: (n, H, W, C)."""
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].repeat(n, 1, 1, 1)
    out = BatchAugment(plan, seed)(x, np.full(n, epoch), np.arange(n))
    return out.numpy().transpose(0, 2, 3, 1)


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov D: the largest gap between the empirical distribution functions."""
    grid = np.sort(np.concatenate([a, b]))
    cdf = lambda s: np.searchsorted(np.sort(s), grid, side="right") / len(s)  # noqa: E731
    return float(np.abs(cdf(a) - cdf(b)).max())


def assert_same_distribution(name: str, cpu: np.ndarray, dev: np.ndarray, bounds: tuple[float, float] | None) -> None:
    limit = 1.95 * np.sqrt((len(cpu) + len(dev)) / (len(cpu) * len(dev)))  # alpha ~ 0.001
    d = ks_statistic(cpu, dev)
    assert d < limit, f"{name}: KS D {d:.3f} >= {limit:.3f} (cpu mean {cpu.mean():.4f}, device {dev.mean():.4f})"
    if bounds is not None:
        lo, hi = bounds
        slack = 0.05 * (hi - lo)
        for path, values in (("cpu", cpu), ("device", dev)):
            assert lo - 1e-6 <= values.min() <= lo + slack and hi - slack <= values.max() <= hi + 1e-6, \
                f"{name} ({path}): drawn over [{values.min():.4f}, {values.max():.4f}], declared [{lo}, {hi}]"


def assert_rate(name: str, applied: np.ndarray, p: float) -> None:
    tolerance = 4 * np.sqrt(p * (1 - p) / len(applied)) if 0 < p < 1 else 0.0
    assert abs(applied.mean() - p) <= tolerance, f"{name}: applied {applied.mean():.3f}, declared p {p}"


def only(kind: type, plan=PLAN) -> tuple[Transform, ...]:
    """The declared transforms of one kind, as a plan of their own."""
    return tuple(op for op in plan if isinstance(op, kind))


# --- the declaration feeds both paths ---

def test_cpu_transforms_draw_independently_per_sample():
    # albumentations' Compose.set_random_seed seeds every transform alike: both flips applied together
    # or not at all, and every p=0.5 transform exactly when the flips are. apply_augment must not.
    _, params = cpu_run(PLAN, np.random.default_rng(0).random((16, 16, 1), dtype=np.float32), 1500)
    applied = np.array([[bool(p) for p in sample] for sample in params])
    flips = applied[:, 0] * 2 + applied[:, 1]  # 0 none, 1 vertical, 2 horizontal, 3 both
    np.testing.assert_allclose(np.bincount(flips, minlength=4) / len(flips), 0.25, atol=0.045)
    varying = [k for k, op in enumerate(PLAN) if 0 < op.p < 1]
    corr = np.corrcoef(applied[:, varying].T)
    assert np.abs(corr - np.eye(len(varying))).max() < 0.1  # |r| < 0.1: ~4 standard errors at n 1500


def test_both_paths_are_built_from_the_plan_alone():
    compose = albumentations_compose(PLAN)
    assert [t.p for t in compose.transforms] == [op.p for op in PLAN]
    assert BatchAugment(PLAN, 0).plan == PLAN
    # every kind of spec has both executors: none can be declared for one path only
    examples = {Flip: Flip("vertical", 1.0), Rot90: Rot90(1.0), Affine: Affine((5.0, 5.0), (1.0, 1.0), 1.0),
                BrightnessContrast: BrightnessContrast((0.1, 0.1), (0.0, 0.0), 1.0), Gamma: Gamma((2.0, 2.0), 1.0),
                GaussianBlur: GaussianBlur((1.0, 1.0), 3, 1.0), GaussNoise: GaussNoise((0.1, 0.1), 1.0)}
    assert set(examples) == set(typing.get_args(Transform))
    image = np.random.default_rng(1).random((12, 12, 1), dtype=np.float32)
    for op in examples.values():  # 8 samples: a quarter turn may draw k = 0
        for outputs in (cpu_run((op,), image, 8)[0], device_run((op,), image, 8)):
            assert not all(np.allclose(out, image) for out in outputs), op

    @dataclasses.dataclass(frozen=True)
    class Sharpen:
        p: float

    with pytest.raises(TypeError, match="no albumentations transform"):
        albumentations_compose((Sharpen(1.0),))
    with pytest.raises(TypeError, match="no device transform"):
        BatchAugment((Sharpen(1.0),), 0)(torch.zeros(1, 1, 4, 4), np.zeros(1), np.zeros(1))


def test_editing_the_declaration_changes_both_paths():
    image = np.full((8, 8, 1), 0.5, np.float32)
    nothing = tuple(dataclasses.replace(op, p=0.0) for op in PLAN)
    assert np.array_equal(cpu_run(nothing, image, 5)[0], np.repeat(image[None], 5, 0))
    assert np.array_equal(device_run(nothing, image, 5), np.repeat(image[None], 5, 0))
    squared = tuple(dataclasses.replace(op, gamma=(2.0, 2.0), p=1.0) if isinstance(op, Gamma)
                    else dataclasses.replace(op, p=0.0) for op in PLAN)
    np.testing.assert_allclose(cpu_run(squared, image, 5)[0], 0.25, atol=1e-7)
    np.testing.assert_allclose(device_run(squared, image, 5), 0.25, atol=1e-7)
    # and through the config: augment.gamma sets the declared range both paths draw from
    (gamma,) = only(Gamma, augment_plan(AugmentConfig(gamma=0.5)))
    assert gamma.gamma == (0.5, 1.5)
    assert augment_plan(AugmentConfig(enabled=False)) is None


# --- the same transform, parameters forced: the same image (up to float rounding) ---

FORCED = [Flip("horizontal", 1.0), Flip("vertical", 1.0),
          Affine((12.0, 12.0), (0.9, 0.9), 1.0), Affine((-7.0, -7.0), (1.1, 1.1), 1.0),
          BrightnessContrast((0.1, 0.1), (-0.15, -0.15), 1.0), BrightnessContrast((0.2, 0.2), (0.2, 0.2), 1.0),
          Gamma((1.3, 1.3), 1.0), GaussianBlur((0.7, 0.7), 3, 1.0), GaussianBlur((2.9, 2.9), 3, 1.0)]


@pytest.mark.parametrize("op", FORCED, ids=lambda op: type(op).__name__)
def test_a_forced_transform_gives_the_same_image_on_both_paths(op):
    image = np.random.default_rng(2).random((24, 24, 1), dtype=np.float32)  # white noise: the worst case
    cpu, dev = cpu_run((op,), image, 1)[0][0], device_run((op,), image, 1)[0]
    assert not np.allclose(cpu, image)
    np.testing.assert_allclose(dev, cpu, atol=1e-4 if isinstance(op, Affine) else 1e-6)  # borders included


@pytest.mark.parametrize("angle,sx,sy,width", [(-14.0, 1.1, 0.92, 24), (0.0, 0.9, 1.1, 24), (33.0, 1.2, 0.8, 17)])
def test_affine_matches_cv2_with_independent_scales_and_non_square_images(angle, sx, sy, width):
    image = np.random.default_rng(3).random((24, width, 1), dtype=np.float32)
    warp = A.Affine(rotate=(angle, angle), scale={"x": (sx, sx), "y": (sy, sy)}, border_mode=cv2.BORDER_REFLECT_101,
                    p=1)
    cpu = A.Compose([warp], seed=0)(image=image)["image"]
    dev = affine(torch.from_numpy(image.transpose(2, 0, 1))[None], torch.tensor([angle]), torch.tensor([sx]),
                 torch.tensor([sy]))[0].numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(dev, cpu, atol=1e-4)


def test_forced_noise_has_the_declared_std_on_both_paths():
    image = np.full((64, 64, 1), 0.5, np.float32)
    op = GaussNoise((0.02, 0.02), 1.0)
    for out in (cpu_run((op,), image, 1)[0][0], device_run((op,), image, 1)[0]):
        assert abs(out.mean() - 0.5) < 0.002 and abs(out.std() - 0.02) < 0.001


# --- each parameter: the same distribution on both paths ---

def cpu_params(plan, n: int) -> list[dict[str, np.ndarray]]:
    """Per transform, the parameters albumentations itself drew on n samples (``apply`` and values)."""
    _, samples = cpu_run(plan, np.random.default_rng(4).random((8, 8, 1), dtype=np.float32), n)
    out = []
    for k, op in enumerate(plan):
        drawn = [sample[k] for sample in samples]
        chosen = [p for p in drawn if p]
        values = {"apply": np.array([bool(p) for p in drawn])}
        if isinstance(op, Rot90):
            values["k"] = np.array([p["factor"] for p in chosen])
        elif isinstance(op, Affine):
            values.update(angle=np.array([p["rotate"] for p in chosen]),
                          scale_x=np.array([p["scale"]["x"] for p in chosen]),
                          scale_y=np.array([p["scale"]["y"] for p in chosen]))
        elif isinstance(op, BrightnessContrast):
            values.update(alpha=np.array([p["alpha"] for p in chosen]), beta=np.array([p["beta"] for p in chosen]))
        elif isinstance(op, Gamma):
            values["gamma"] = np.array([p["gamma"] for p in chosen])
        elif isinstance(op, GaussianBlur):  # taps [e, 1, e] / sum, e = exp(-1 / (2 sigma²))
            values["sigma"] = np.array([np.sqrt(-1 / (2 * np.log(p["kernel"][0] / p["kernel"][1]))) for p in chosen])
        out.append(values)
    return out


def test_every_parameter_is_drawn_from_the_same_distribution_on_both_paths():
    n = 3000
    cpu = cpu_params(PLAN, n)
    dev = draw_params(PLAN, 0, np.zeros(n, np.int64), np.arange(n))
    for op, c, d in zip(PLAN, cpu, dev):
        name = type(op).__name__
        assert_rate(f"{name} (cpu)", c["apply"], op.p)
        assert_rate(f"{name} (device)", d["apply"], op.p)
        d = {key: values[d["apply"]] for key, values in d.items()}
        if isinstance(op, Rot90):
            for values in (c["k"], d["k"]):
                np.testing.assert_allclose(np.bincount(values, minlength=4) / len(values), 0.25,
                                           atol=4 * np.sqrt(0.25 * 0.75 / len(values)))
        bounds = {"angle": op.rotate if isinstance(op, Affine) else None,
                  "scale_x": getattr(op, "scale", None), "scale_y": getattr(op, "scale", None),
                  "alpha": tuple(1 + v for v in op.contrast) if isinstance(op, BrightnessContrast) else None,
                  "beta": getattr(op, "brightness", None), "gamma": getattr(op, "gamma", None),
                  "sigma": getattr(op, "sigma", None)}
        for key in c:
            if key in bounds:
                assert_same_distribution(f"{name}.{key}", c[key], d[key], bounds[key])
        for x, y in (("scale_x", "scale_y"), ("alpha", "beta")):  # drawn independently of each other
            if x in c:
                for path, values in (("cpu", c), ("device", d)):
                    r = np.corrcoef(values[x], values[y])[0, 1]
                    assert abs(r) < 4 / np.sqrt(len(values[x])), f"{name} {x} ~ {y} ({path}): r {r:.3f}"
    noise = dev[-1]
    assert isinstance(PLAN[-1], GaussNoise)
    assert_same_distribution("GaussNoise.std (device vs declared)", noise["std"][noise["apply"]],
                             np.random.default_rng(5).uniform(*PLAN[-1].std, 3000), PLAN[-1].std)


# --- crafted images: what each path does to them, measured the same way ---

def _categories(outputs: np.ndarray, references: list[np.ndarray]) -> np.ndarray:
    """Which reference each output equals exactly (-1: none)."""
    found = np.full(len(outputs), -1)
    for c, ref in enumerate(references):
        found[np.all(outputs == ref[None], axis=(1, 2, 3))] = c
    return found


ASYMMETRIC = (np.arange(64, dtype=np.float32).reshape(8, 8, 1) + 1) / 65  # every pixel distinct


def _dihedral(image: np.ndarray) -> list[np.ndarray]:
    return [np.rot90(m, k) for m in (image, image[:, ::-1]) for k in range(4)]


@pytest.mark.parametrize("kinds,references", [
    ((Flip,), [ASYMMETRIC, ASYMMETRIC[:, ::-1], ASYMMETRIC[::-1], ASYMMETRIC[::-1, ::-1]]),  # none, h, v, both
    ((Rot90,), [np.rot90(ASYMMETRIC, k) for k in range(4)]),
    ((Flip, Rot90), _dihedral(ASYMMETRIC)),  # all 8 symmetries of the square, 1/8 each
], ids=["flips", "rot90", "dihedral"])
def test_flips_and_quarter_turns_reach_each_outcome_equally_on_both_paths(kinds, references):
    plan = tuple(op for op in PLAN if isinstance(op, kinds))
    n = 2000
    for path, outputs in (("cpu", cpu_run(plan, ASYMMETRIC, n)[0]), ("device", device_run(plan, ASYMMETRIC, n))):
        found = _categories(outputs, references)
        assert (found >= 0).all(), path
        share = 1 / len(references)
        np.testing.assert_allclose(np.bincount(found, minlength=len(references)) / n, share,
                                   atol=4 * np.sqrt(share * (1 - share) / n), err_msg=path)


def _blob() -> np.ndarray:
    """An elongated Gaussian spot along x (sigma 5 x 2 px) at the centre the affine warp turns about."""
    y, x = np.mgrid[0:40, 0:40] - 19.5
    return np.exp(-(x ** 2 / (2 * 5.0 ** 2) + y ** 2 / (2 * 2.0 ** 2))).astype(np.float32)[..., None]


def _spot_shape(out: np.ndarray) -> dict[str, np.ndarray]:
    """Orientation (degrees) and axis lengths (second moments) of the spot in each (n, H, W, 1) output."""
    w = out[..., 0].astype(np.float64)
    y, x = np.mgrid[0:w.shape[1], 0:w.shape[2]]
    m = w.sum(axis=(1, 2))
    cx, cy = (w * x).sum(axis=(1, 2)) / m, (w * y).sum(axis=(1, 2)) / m
    dx, dy = x[None] - cx[:, None, None], y[None] - cy[:, None, None]
    mxx, myy, mxy = ((w * dx * dx).sum(axis=(1, 2)) / m, (w * dy * dy).sum(axis=(1, 2)) / m,
                     (w * dx * dy).sum(axis=(1, 2)) / m)
    spread = np.sqrt(((mxx - myy) / 2) ** 2 + mxy ** 2)
    return {"angle": np.degrees(0.5 * np.arctan2(2 * mxy, mxx - myy)),
            "major": np.sqrt((mxx + myy) / 2 + spread), "minor": np.sqrt((mxx + myy) / 2 - spread)}


def _two_levels() -> np.ndarray:
    image = np.full((4, 8, 1), 0.3, np.float32)
    image[:, 4:] = 0.6  # 0.6 x 1.2 + 0.2 < 1 and 0.3 x 0.8 - 0.2 > 0: never clipped
    return image


def _alpha_beta(out: np.ndarray) -> dict[str, np.ndarray]:
    low, high = out[:, :, :4].mean(axis=(1, 2, 3)), out[:, :, 4:].mean(axis=(1, 2, 3))
    alpha = (high - low) / 0.3
    return {"alpha": alpha, "beta": low - 0.3 * alpha}


def _impulse() -> np.ndarray:
    image = np.zeros((9, 9, 1), np.float32)
    image[4, 4] = 1.0
    return image


def _blur_sigma(out: np.ndarray) -> dict[str, np.ndarray]:
    ratio = out[:, 4, 5, 0].astype(np.float64) / out[:, 4, 4, 0]  # k1 k0 / k0²
    return {"sigma": np.sqrt(-1 / (2 * np.log(ratio)))}


HALF = np.full((32, 32, 1), 0.5, np.float32)

MEASURED = {  # kind: (crafted image, statistics per output, declared bounds of each: None = compared only)
    Affine: (_blob(), _spot_shape, {"angle": (-15.0, 15.0), "major": None, "minor": None}),
    BrightnessContrast: (_two_levels(), _alpha_beta, {"alpha": (0.8, 1.2), "beta": (-0.2, 0.2)}),
    Gamma: (HALF, lambda out: {"gamma": np.log(out.mean(axis=(1, 2, 3)).astype(np.float64)) / np.log(0.5)},
            {"gamma": (0.8, 1.2)}),
    GaussianBlur: (_impulse(), _blur_sigma, {"sigma": (0.5, 3.0)}),
    GaussNoise: (HALF, lambda out: {"std": out.std(axis=(1, 2, 3)).astype(np.float64)}, {"std": None}),
}


@pytest.mark.parametrize("kind", list(MEASURED), ids=lambda kind: kind.__name__)
def test_each_transform_does_the_same_to_a_crafted_image_on_both_paths(kind):
    image, measure, bounds = MEASURED[kind]
    plan = only(kind)
    (op,) = plan
    n = 2000
    stats = {}
    for path, outputs in (("cpu", cpu_run(plan, image, n)[0]), ("device", device_run(plan, image, n))):
        applied = ~np.all(np.abs(outputs - image[None]) < 1e-6, axis=(1, 2, 3))
        assert_rate(f"{kind.__name__} ({path})", applied, op.p)
        stats[path] = measure(outputs[applied])
    for key, declared in bounds.items():
        if kind is Affine and key == "angle":  # the spot turns by the drawn angle (sign: image axes, y down)
            declared = None
            for path in stats:
                assert np.abs(stats[path]["angle"]).max() <= 15.5 and np.abs(stats[path]["angle"]).max() > 14
        assert_same_distribution(f"{kind.__name__}.{key}", stats["cpu"][key], stats["device"][key], declared)
    if kind is GaussNoise:  # sigma uniform in [0, 0.02]: its mean 0.01, nothing above 0.02 (+ sampling error)
        for values in stats.values():
            assert abs(values["std"].mean() - 0.01) < 0.0005 and values["std"].max() < 0.021


# --- the device path's seeding ---

def test_device_draws_depend_on_seed_epoch_and_index_only():
    image = np.random.default_rng(6).random((16, 16, 1), dtype=np.float32)
    x = torch.from_numpy(image.transpose(2, 0, 1))[None].repeat(12, 1, 1, 1)
    augment = BatchAugment(PLAN, 7)
    full = augment(x, np.zeros(12, np.int64), np.arange(12))
    order = np.array([9, 2, 5])  # another batch, another batch size, another position
    part = augment(x[:3], np.zeros(3, np.int64), order)
    torch.testing.assert_close(part, full[order], rtol=0, atol=1e-6)  # vectorised pow / exp: 1-ulp tails
    assert torch.equal(augment(x, np.zeros(12, np.int64), np.arange(12)), full)
    assert not torch.allclose(augment(x, np.ones(12, np.int64), np.arange(12)), full)  # next epoch
    assert not torch.allclose(BatchAugment(PLAN, 8)(x, np.zeros(12, np.int64), np.arange(12)), full)  # other seed


def test_quarter_turns_of_a_non_square_batch_are_refused_by_name():
    with pytest.raises(ConfigError, match="augment.rot90.*square preprocess.size"):
        BatchAugment((Rot90(1.0),), 0)(torch.zeros(4, 1, 8, 12), np.zeros(4, np.int64), np.arange(4))


# --- the device path's loader ---

def _loaders(tmp_path, *extra: str):
    from mscvision.training.dataset_setup import prepare_data
    from mscvision.training.loaders import build_loaders

    config = load_config(None, [*tiny_overrides(make_shapes_dataset(tmp_path / "shapes"), tmp_path / "runs"), *extra])
    data = prepare_data(config)
    return build_loaders(config, data), data


@pytest.mark.parametrize("balanced", [False, True])
def test_resident_loader_draws_the_cpu_loaders_batches(tmp_path, balanced):
    # augmentation off: the same epoch order (shuffled or balanced), batches, images, standardisation, targets
    extra = ["augment.enabled=false", f"data.balanced_sampling={str(balanced).lower()}", "preprocess.mean=[0.4]",
             "preprocess.std=[0.3]"]
    cpu, _ = _loaders(tmp_path / "a", *extra)
    dev, _ = _loaders(tmp_path / "b", *extra, "data.augment_on=device")
    from mscvision.training.resident import ResidentLoader

    assert cpu.augment_on == "cpu" and dev.augment_on == "device" and isinstance(dev.train, ResidentLoader)
    assert len(dev.train) == len(cpu.train) and len(dev.train.dataset) == len(cpu.train.dataset)
    for epoch in (0, 3):
        cpu.train.sampler.set_epoch(epoch)
        dev.train.sampler.set_epoch(epoch)
        batches = list(zip(cpu.train, dev.train, strict=True))
        for (x, y), (dx, dy) in batches:
            assert torch.equal(x, dx) and y.keys() == dy.keys()
            assert all(torch.equal(y[k], dy[k]) for k in y)
    assert cpu.val is not None and dev.val is not None  # held-out loaders: DataLoaders on both paths


def test_rank_shares_of_the_resident_loader_make_the_one_process_batches(monkeypatch):
    from mscvision.training import distributed
    from mscvision.training.data import EpochSampler
    from mscvision.training.resident import ResidentImages, ResidentLoader
    from mscvision.core.preprocess import PreprocessSpec

    images = [np.full((4, 4, 1), i / 40, np.float32) for i in range(40)]
    data = ResidentImages(images, {"t": np.arange(40)})
    spec = PreprocessSpec(intensity="fixed", size=(4, 4))
    whole = ResidentLoader(data, EpochSampler(40, 0, shuffle=True), 8, True, spec, BatchAugment(PLAN, 0))
    half = ResidentLoader(data, EpochSampler(40, 0, shuffle=True), 4, True, spec, BatchAugment(PLAN, 0))
    shares = []
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "rank_and_world", lambda rank=rank: (rank, 2))
        shares.append(list(half.shard(2)))
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *shares, strict=True):
        # the two ranks' batches of a step are the one-process batch; each image augmented alike
        assert sorted(y["t"].tolist()) == sorted(y0["t"].tolist() + y1["t"].tolist())
        torch.testing.assert_close(torch.cat([x0, x1])[torch.argsort(torch.cat([y0["t"], y1["t"]]))],
                                   x[torch.argsort(y["t"])], rtol=0, atol=1e-6)


def test_auto_augments_on_the_device_only_on_cuda_with_cached_images(monkeypatch):
    from mscvision.training import resident

    config = load_config()
    assert resident.augment_on(config, cuda=False, n_images=100) == "cpu"
    assert resident.augment_on(load_config(None, ["data.augment_on=device"]), cuda=False, n_images=100) == "device"
    assert resident.augment_on(load_config(None, ["data.cache_images=false"]), cuda=True, n_images=100) == "cpu"
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    for memory, expected in ((80 * 2 ** 30, "device"), (2 ** 20, "cpu")):  # 100 images x 112² x 4 B: 4.8 MiB
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _, m=memory: type("P", (), {"total_memory": m}))
        assert resident.augment_on(config, cuda=True, n_images=100) == expected


def test_a_tiny_training_augments_on_the_device(tmp_path):
    import lightning as L

    from mscvision.training.fit import train
    from mscvision.training.resident import ResidentLoader

    seen = {}

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.setdefault("loader", type(trainer.train_dataloader))
            seen["batches"] = seen.get("batches", 0) + 1

    torch.set_num_threads(1)
    manifest = make_shapes_dataset(tmp_path / "shapes")
    result = train(load_config(None, [*tiny_overrides(manifest, tmp_path / "runs", epochs=1), "trainer.accelerator=cpu",
                                      "data.augment_on=device"]), callbacks=(Spy(),))
    assert result.metrics["run"]["augment_on"] == "device"
    assert seen["loader"] is ResidentLoader and seen["batches"] == 2  # 18 training images, batches of 8, last dropped
    assert result.metrics["test"]["shape"]["n"] > 0


def test_the_training_benchmark_measures_both_loaders_in_one_run(tmp_path):
    from mscvision.benchmarks.training_speed import training_throughput

    torch.set_num_threads(1)
    config = load_config(None, tiny_overrides(make_shapes_dataset(tmp_path / "shapes"), tmp_path / "runs"))
    figures = training_throughput(config, steps=3)
    assert figures["pipeline_img_s"] > 0 and figures["device_pipeline_img_s"] > 0 and figures["in_memory_img_s"] > 0
    # the ratio comes from the unrounded rates, the printed rates are rounded to 0.1 img/s
    assert figures["device_ratio"] == pytest.approx(figures["device_pipeline_img_s"] / figures["in_memory_img_s"],
                                                    abs=2e-3)
    uncached = training_throughput(load_config(None, [*tiny_overrides(tmp_path / "shapes" / "manifest.csv",
                                                                      tmp_path / "runs"), "data.cache_images=false"]),
                                   steps=1)
    assert uncached["device_pipeline_img_s"] is None and uncached["device_ratio"] is None
