"""The one preprocessing definition: decoded (H, W, C) array → float32 (C, h, w).

``PreprocessSpec`` is frozen into every checkpoint and every exported model; training, evaluation
and the runtime all call ``preprocess`` (or its two halves, between which training inserts random
augmentation), so they cannot drift apart.

    to_unit_range:  select channels → intensities to float32 [0, 1] → rescale to the trained pixel
                    size (if known) → fit to the target size        (H, W, C) float32
    standardize:    optional per-channel (x - mean) / std, HWC → CHW   (C, h, w) float32
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np

from mscvision.core.errors import ConfigError, ImageError

SPEC_VERSION = 1
INTENSITY_MODES = ("fixed", "percentile")
FIT_MODES = ("resize", "crop_or_pad")


@dataclass(frozen=True)
class PreprocessSpec:
    in_channels: int = 1  # channels the model sees, after selection
    channels: tuple[int, ...] | None = None  # indices into the decoded channels, in model order
    intensity: str = "percentile"  # "fixed": divide by the bit-depth maximum; "percentile": see below
    percentile_low: float = 1.0  # per image, per channel: p_low → 0, p_high → 1, clipped
    percentile_high: float = 99.8
    percentile_scope: str = "image"  # statistics over the whole image the function is given
    bit_depth: int | None = None  # expected bit depth (8/16); None accepts either
    size: tuple[int, int] = (128, 128)  # (h, w) the model sees
    fit: str = "resize"  # "resize": stretch; "crop_or_pad": centre-crop or zero-pad each axis
    pixel_size_um: float | None = None  # trained pixel size; inputs with a known size are rescaled
    mean: tuple[float, ...] | None = None  # after intensity scaling, per channel
    std: tuple[float, ...] | None = None
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        if self.intensity not in INTENSITY_MODES:
            raise ConfigError(f"preprocess.intensity={self.intensity!r}: use one of {INTENSITY_MODES}")
        if self.fit not in FIT_MODES:
            raise ConfigError(f"preprocess.fit={self.fit!r}: use one of {FIT_MODES}")
        if self.channels is not None and len(self.channels) != self.in_channels:
            raise ConfigError(f"preprocess.channels={list(self.channels)} selects {len(self.channels)} "
                              f"channels but in_channels={self.in_channels}")
        if not 0 <= self.percentile_low < self.percentile_high <= 100:
            raise ConfigError("preprocess.percentile_low/high must satisfy 0 <= low < high <= 100")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and len(value) != self.in_channels:
                raise ConfigError(f"preprocess.{name} has {len(value)} values for {self.in_channels} channels")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessSpec":
        if data.get("version", SPEC_VERSION) != SPEC_VERSION:
            raise ConfigError(f"preprocessing spec version {data.get('version')} is not supported "
                              f"(this mscvision reads version {SPEC_VERSION})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown preprocessing key(s) {unknown}; known: {sorted(known)}")
        tuples = {k: tuple(v) for k, v in data.items() if k in ("channels", "size", "mean", "std") and v is not None}
        return cls(**{**data, **tuples})


def preprocess(image: np.ndarray, spec: PreprocessSpec, pixel_size_um: float | None = None,
               source: str = "image") -> np.ndarray:
    """Decoded (H, W, C) array → float32 (C, h, w), exactly as the model was trained."""
    return standardize(to_unit_range(image, spec, pixel_size_um, source), spec)


def to_unit_range(image: np.ndarray, spec: PreprocessSpec, pixel_size_um: float | None = None,
                  source: str = "image") -> np.ndarray:
    x = select_channels(image, spec, source)
    x = scale_intensity(x, spec, source)
    if spec.pixel_size_um and pixel_size_um and not np.isclose(pixel_size_um, spec.pixel_size_um, rtol=0.02):
        factor = pixel_size_um / spec.pixel_size_um
        x = resize(x, (max(1, round(x.shape[0] * factor)), max(1, round(x.shape[1] * factor))))
    return fit_to_size(x, spec.size, spec.fit)


def standardize(x: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """(H, W, C) float32 in [0, 1] → (C, H, W) float32, with the optional mean/std applied."""
    if spec.mean is not None:
        x = x - np.asarray(spec.mean, np.float32)
    if spec.std is not None:
        x = x / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def select_channels(image: np.ndarray, spec: PreprocessSpec, source: str = "image") -> np.ndarray:
    if image.ndim == 2:
        image = image[:, :, None]
    n = image.shape[2]
    if spec.channels is not None:
        if max(spec.channels) >= n:
            raise ImageError(f"{source}: has {n} channel(s) but the model reads channel(s) "
                             f"{list(spec.channels)}. Fix: supply images with those channels.")
        return image[:, :, list(spec.channels)]
    if n == spec.in_channels:
        return image
    if spec.in_channels == 1 and n == 3 and _is_grey_rgb(image):
        return image[:, :, :1]  # greyscale saved as RGB (common for JPEG): the channels are equal
    raise ImageError(f"{source}: has {n} channel(s); the model expects {spec.in_channels}. Fix: supply "
                     f"{spec.in_channels}-channel images, or choose channels with preprocess.channels.")


def _is_grey_rgb(image: np.ndarray) -> bool:
    return bool(np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(image[:, :, 0], image[:, :, 2]))


def scale_intensity(image: np.ndarray, spec: PreprocessSpec, source: str = "image") -> np.ndarray:
    """Raw intensities → float32 in [0, 1] by the spec's rule."""
    if spec.bit_depth and _bit_depth(image) != spec.bit_depth:
        raise ImageError(f"{source}: is {_bit_depth(image)}-bit; the model was trained on "
                         f"{spec.bit_depth}-bit images. Fix: supply {spec.bit_depth}-bit images.")
    x = image.astype(np.float32, copy=False)
    if spec.intensity == "fixed":
        return np.clip(x / np.float32(_dtype_max(image)), 0.0, 1.0)
    return percentile_normalize(x, spec.percentile_low, spec.percentile_high)


def percentile_normalize(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Per channel: the ``low`` percentile maps to 0 and ``high`` to 1, clipped to [0, 1].

    A flat channel (high == low) maps to 0 rather than dividing by zero.
    """
    flat = x.reshape(-1, x.shape[2])
    lo, hi = np.percentile(flat, [low, high], axis=0).astype(np.float32)
    span = np.where(hi > lo, hi - lo, np.float32(1.0))
    return np.clip((x - lo) / span, 0.0, 1.0).astype(np.float32, copy=False)


def _dtype_max(image: np.ndarray) -> float:
    if image.dtype == np.uint8:
        return 255.0
    if image.dtype == np.uint16:
        return 65535.0
    return 1.0  # float images are taken to be in [0, 1] already


def _bit_depth(image: np.ndarray) -> int:
    return {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(image.dtype, 32)


def fit_to_size(x: np.ndarray, size: tuple[int, int], fit: str) -> np.ndarray:
    if x.shape[:2] == tuple(size):
        return x
    if fit == "resize":
        return resize(x, size)
    return crop_or_pad(x, size)


def crop_or_pad(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-crop each axis that is too large, zero-pad (centred) each axis that is too small."""
    out = np.zeros((size[0], size[1], x.shape[2]), np.float32)
    src, dst = [], []
    for have, want in zip(x.shape[:2], size):
        if have >= want:
            start = (have - want) // 2
            src.append(slice(start, start + want))
            dst.append(slice(0, want))
        else:
            start = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(start, start + have))
    out[dst[0], dst[1]] = x[src[0], src[1]]
    return out


def resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Antialiased bilinear resize of (H, W, C) float32, matching Pillow's BILINEAR filter.

    Built as two small weight matrices (rows, columns), so it is exact, vectorised and the same
    on every platform.
    """
    h, w, c = x.shape
    rows = _bilinear_weights(h, size[0])
    cols = _bilinear_weights(w, size[1])
    # two BLAS matmuls; np.einsum took a slow batched path here (a third of `predict`'s time)
    out = (rows @ x.astype(np.float32, copy=False).reshape(h, w * c)).reshape(size[0], w, c)
    return np.matmul(cols, out)


def _bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of a triangle filter widened by the scale when shrinking (antialias)."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale - 0.5
    dist = np.abs(np.arange(n_in)[None, :] - centres[:, None]) / support
    weights = np.clip(1.0 - dist, 0.0, None)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
