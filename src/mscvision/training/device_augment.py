"""The device path's augmentation: training/augment.py's plan as torch ops on a whole batch.

``BatchAugment(plan, seed)`` takes a (B, C, H, W) float32 batch in [0, 1] on any device (the
training GPU, or the CPU) and applies the plan's transforms in the plan's order, each to the
samples that drew it, with albumentations 2.0.8's semantics (augment.py states them per spec).
Where the two differ:

- Affine: ``F.affine_grid`` + ``F.grid_sample`` (bilinear, ``padding_mode="reflection"``,
  ``align_corners=True``: reflection about the edge pixels' centres, which is BORDER_REFLECT_101;
  linear interpolation commutes with that reflection) against cv2.warpAffine (bilinear,
  BORDER_REFLECT_101). Same map, same border; the interpolation arithmetic differs (float32 vs
  OpenCV's), measured max |difference| 1e-5 on white noise in [0, 1], 5e-7 on a smooth image.
- GaussianBlur: a grouped conv2d over a reflect-101 pad against cv2.sepFilter2D: float rounding.
- BrightnessContrast: float32 arithmetic (albumentations computes in float64, then rounds).
- GaussNoise: torch's normal generator (per sample, see seeding) instead of cv2.randn: the same
  distribution, other draws.
- The random draws themselves: same distributions (tests/training/test_device_augment.py checks
  each parameter), never the same numbers as albumentations' Python ``random`` streams.

Seeding: every parameter of sample ``index`` in ``epoch`` is a function of (run seed, epoch,
index) alone: counter-based uniforms from a SplitMix64 hash of the three (``uniforms``), and
each noisy sample's noise comes from a torch generator seeded from the same hash. So, as on the
CPU path, an image draws the same augmentation whichever batch, rank, world size or resumed run
it lands in (the same up to float rounding: vectorised kernels may round a value 1 ulp apart);
a different epoch draws anew. The noise values depend on the device's generator (torch's CPU and
CUDA generators differ): reproducible per device type. No draw synchronises with the device:
parameters are drawn on the host and copied asynchronously.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mscvision.core.errors import ConfigError
from mscvision.training.augment import (Affine, BrightnessContrast, Flip, GaussianBlur, GaussNoise, Gamma, Rot90,
                                        Transform)

SLOTS = 8  # uniforms reserved per transform: transform k of the plan reads columns 8k .. 8k+7
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
TORCH_BORDERS = {"reflect_101": "reflection"}  # Affine.border -> grid_sample padding (with align_corners=True)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (Steele et al. 2014), on uint64 arrays (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sample_keys(seed: int, epoch: np.ndarray, index: np.ndarray) -> np.ndarray:
    """One 64-bit key per sample from (run seed, epoch, index): the root of all its draws."""
    with np.errstate(over="ignore"):
        key = _mix(np.full(len(index), seed & 0xFFFFFFFFFFFFFFFF, np.uint64) + GOLDEN)
        key = _mix((key ^ np.asarray(epoch, np.uint64)) + GOLDEN)
        return _mix((key ^ np.asarray(index, np.uint64)) + GOLDEN)


def uniforms(keys: np.ndarray, count: int) -> np.ndarray:
    """(B, count) uniforms in [0, 1): draw j of a sample is SplitMix64's j-th output from its key."""
    with np.errstate(over="ignore"):
        steps = np.arange(1, count + 1, dtype=np.uint64) * GOLDEN
        bits = _mix(keys[:, None] + steps[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def _uniform(u: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    lo, hi = bounds
    return lo + (hi - lo) * u  # what Python's random.uniform (albumentations' py_random) computes


def draw_params(plan: tuple[Transform, ...], seed: int, epoch: np.ndarray, index: np.ndarray) -> list[dict]:
    """Per transform of ``plan``, its parameters for each sample: ``apply`` (bool) and the transform's
    own values (numpy arrays of length B). Pure function of (plan, seed, epoch, index)."""
    keys = sample_keys(seed, epoch, index)
    u = uniforms(keys, SLOTS * len(plan))
    params = []
    for k, op in enumerate(plan):
        col = u[:, SLOTS * k: SLOTS * (k + 1)]
        p = {"apply": col[:, 0] < op.p}
        if isinstance(op, Rot90):
            p["k"] = np.minimum((col[:, 1] * 4).astype(np.int64), 3)  # randint(0, 3)
        elif isinstance(op, Affine):
            p["angle"] = _uniform(col[:, 1], op.rotate)
            p["scale_x"] = _uniform(col[:, 2], op.scale)
            p["scale_y"] = _uniform(col[:, 3], op.scale)
        elif isinstance(op, BrightnessContrast):
            p["alpha"] = 1.0 + _uniform(col[:, 1], op.contrast)
            p["beta"] = _uniform(col[:, 2], op.brightness)
        elif isinstance(op, Gamma):
            p["gamma"] = _uniform(col[:, 1], op.gamma)
        elif isinstance(op, GaussianBlur):
            p["sigma"] = _uniform(col[:, 1], op.sigma)
        elif isinstance(op, GaussNoise):
            p["std"] = _uniform(col[:, 1], op.std)
            with np.errstate(over="ignore"):
                p["noise_seed"] = (_mix(keys ^ np.uint64(k + 1)) >> np.uint64(1)).astype(np.int64)  # 63 bits
        elif not isinstance(op, Flip):
            raise TypeError(f"no device transform for {op!r}")
        params.append(p)
    return params


class BatchAugment:
    """Applies ``plan`` to batches on their own device; see the module docstring for semantics and seeding.

    Each transform runs on the samples that drew it only (the indices are known on the host, so
    selecting them costs no device synchronisation): half the batch pays for the affine warp, a
    fifth for the blur. On a CPU the ops run on one intra-op thread (restored afterwards): they are
    small and memory-bound, and on the shared 2-core machine two threads waiting for each other made
    a batch of 64 at 112 px take 10-30x longer (0.4 s against 15-30 ms).
    """

    def __init__(self, plan: tuple[Transform, ...], seed: int):
        self.plan, self.seed = tuple(plan), seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def __call__(self, x: torch.Tensor, epoch: np.ndarray, index: np.ndarray) -> torch.Tensor:
        """``x`` (B, C, H, W) float32 in [0, 1]; ``epoch``, ``index`` per sample (numpy). Returns a new tensor."""
        if x.device.type != "cpu":
            return self._augment(x, epoch, index)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._augment(x, epoch, index)
        finally:
            torch.set_num_threads(threads)

    def _augment(self, x: torch.Tensor, epoch: np.ndarray, index: np.ndarray) -> torch.Tensor:
        params = draw_params(self.plan, self.seed, epoch, index)
        x = x.clone()
        for op, p in zip(self.plan, params):
            if not isinstance(op, Rot90):
                _update(x, p["apply"], lambda part, sel, op=op, p=p: self._apply(op, part, _take(p, sel)))
                continue
            if p["apply"].any() and x.shape[-1] != x.shape[-2]:
                raise ConfigError(f"augment.rot90 turns a {tuple(x.shape[-2:])} image into another shape. Fix: a "
                                  "square preprocess.size, or augment.rot90: false.")
            for quarter in (1, 2, 3):  # one subset per number of quarter turns
                turned = p["apply"] & (p["k"] == quarter)
                _update(x, turned, lambda part, _, q=quarter: torch.rot90(part, q, dims=(-2, -1)))
        return x

    def _apply(self, op: Transform, x: torch.Tensor, p: dict) -> torch.Tensor:
        """``op`` on every sample of ``x`` with the parameters ``p`` (one value per sample)."""
        if isinstance(op, Flip):
            return x.flip(-1 if op.axis == "horizontal" else -2)
        if isinstance(op, Affine):
            return affine(x, _values(p["angle"], x), _values(p["scale_x"], x), _values(p["scale_y"], x), op.border)
        if isinstance(op, BrightnessContrast):
            return (x * _per_sample(p["alpha"], x) + _per_sample(p["beta"], x)).clamp_(0.0, 1.0)
        if isinstance(op, Gamma):
            return x.pow(_per_sample(p["gamma"], x))
        if isinstance(op, GaussianBlur):
            return gaussian_blur(x, _values(p["sigma"], x), op.ksize)
        if isinstance(op, GaussNoise):
            return (x + self._noise(x, p["noise_seed"]) * _per_sample(p["std"], x)).clamp_(0.0, 1.0)
        raise TypeError(f"no device transform for {op!r}")

    def _noise(self, x: torch.Tensor, seeds: np.ndarray) -> torch.Tensor:
        """Standard normal noise per pixel and channel; sample i's from a generator seeded with ``seeds[i]``."""
        if x.device not in self._generators:
            self._generators[x.device] = torch.Generator(device=x.device)
        generator = self._generators[x.device]
        noise = torch.empty_like(x)
        for i, seed in enumerate(seeds.tolist()):
            generator.manual_seed(seed)
            noise[i].normal_(generator=generator)
        return noise


def _update(x: torch.Tensor, chosen: np.ndarray, transform) -> None:
    """``x[chosen] = transform(x[chosen], positions of chosen)``, in place; nothing when none is chosen."""
    sel = np.flatnonzero(chosen)
    if not len(sel):
        return
    if len(sel) == len(x):
        x.copy_(transform(x, sel))
        return
    rows = torch.from_numpy(sel).to(x.device, non_blocking=True)
    x.index_copy_(0, rows, transform(x.index_select(0, rows), sel))


def _take(params: dict, sel: np.ndarray) -> dict:
    return {name: values[sel] for name, values in params.items()}


def _values(values: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    """A per-sample numpy column as a float32 (B,) tensor on ``x``'s device (an asynchronous copy)."""
    return torch.from_numpy(np.ascontiguousarray(values, np.float32)).to(x.device, non_blocking=True)


def _per_sample(values: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    """A per-sample float column shaped (B, 1, 1, 1) for broadcasting over ``x``."""
    return _values(values, x).view(-1, 1, 1, 1)


def affine(x: torch.Tensor, angle_deg: torch.Tensor, scale_x: torch.Tensor, scale_y: torch.Tensor,
           border: str = "reflect_101") -> torch.Tensor:
    """albumentations' Affine (rotate, scale; see augment.Affine) on every sample of ``x``.

    albumentations builds the forward map in pixel offsets from the centre, d' = R S d with
    R = [[cos a, sin a], [-sin a, cos a]] and S = diag(sx, sy), and cv2.warpAffine samples the source
    at its inverse. grid_sample wants that inverse, d = S^-1 R^T d', in coordinates normalised with
    align_corners=True (offset x 2 / (size - 1)), hence the aspect factors off the diagonal.
    """
    _, _, h, w = x.shape
    a = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(a), torch.sin(a)
    theta = torch.zeros(len(x), 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = cos / scale_x
    theta[:, 0, 1] = -sin / scale_x * ((h - 1) / (w - 1))
    theta[:, 1, 0] = sin / scale_y * ((w - 1) / (h - 1))
    theta[:, 1, 1] = cos / scale_y
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=TORCH_BORDERS[border], align_corners=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, ksize: int) -> torch.Tensor:
    """Each sample of ``x`` blurred with its own ``ksize`` x ``ksize`` Gaussian (albumentations' taps), reflect-101."""
    b, c, h, w = x.shape
    r = ksize // 2
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k1 = torch.exp(-0.5 * (t[None, :] / sigma[:, None]) ** 2)
    k1 = k1 / k1.sum(dim=1, keepdim=True)
    kernel = (k1[:, :, None] * k1[:, None, :]).repeat_interleave(c, dim=0).unsqueeze(1)  # (B*C, 1, k, k)
    padded = F.pad(x.reshape(1, b * c, h, w), (r, r, r, r), mode="reflect")  # torch's reflect: edge not repeated
    return F.conv2d(padded, kernel, groups=b * c).view(b, c, h, w)
