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
import functools
import json
import math
from dataclasses import dataclass

import numpy as np

from mscvision.core.errors import ConfigError, ImageError

SPEC_VERSION = 1
# A pixel size outside this range (µm per pixel) is not a microscope's: 0.01 is below any optical
# resolution, 100 is coarser than a whole-slide overview. Such a value in a file's metadata is a
# writer's default or a unit mix-up (72 dpi reads as 353 µm/px), so it is refused, never obeyed.
PIXEL_SIZE_RANGE_UM = (0.01, 100.0)
_FLATNESS_SAMPLE = 2**14
INTENSITY_MODES = ("fixed", "percentile")
FIT_MODES = ("resize", "crop_or_pad")
# Where the percentile statistics are measured. "image": over the whole array `preprocess` is given
# (one image, one crop, one tile: each normalised on its own). Tiling whole fields (docs/architecture.md)
# will add "field": one set of statistics for the field, applied to each of its tiles. Until that is
# built, any other value is refused, so a model that asks for it never runs normalised per tile.
PERCENTILE_SCOPES = ("image",)


@dataclass(frozen=True)
class PreprocessSpec:
    in_channels: int = 1  # channels the model sees, after selection
    channels: tuple[int, ...] | None = None  # indices into the decoded channels, in model order
    intensity: str = "percentile"  # "fixed": divide by the bit-depth maximum; "percentile": see below
    percentile_low: float = 1.0  # per image, per channel: p_low → 0, p_high → 1, clipped
    percentile_high: float = 99.8
    percentile_scope: str = "image"  # where the percentiles are measured: PERCENTILE_SCOPES
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
        if self.percentile_scope not in PERCENTILE_SCOPES:
            raise ConfigError(f"preprocess.percentile_scope={self.percentile_scope!r}: use 'image' (the percentiles "
                              "are measured over the whole array preprocessed: one image, crop or tile); a "
                              "per-field scope for tiled whole fields does not exist yet")
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
                  source: str = "image", ordered: np.ndarray | None = None) -> np.ndarray:
    """``ordered``: ``sorted_values`` of the image's selected channels, when the caller has it (the
    station sorts a tile once for this and its checks); computed here when needed otherwise."""
    x = select_channels(image, spec, source)
    x = scale_intensity(x, spec, source, ordered)
    target = rescaled_size(x.shape[0], x.shape[1], spec, pixel_size_um, source)
    if target != x.shape[:2]:
        x = resize(x, target)
    return fit_to_size(x, spec.size, spec.fit)


def rescaled_size(height: int, width: int, spec: PreprocessSpec, pixel_size_um: float | None,
                  source: str = "image") -> tuple[int, int]:
    """(h, w) after rescaling to the trained pixel size; unchanged when either size is unknown.

    A pixel size that would be obeyed must be a plausible one (``PIXEL_SIZE_RANGE_UM``): ``ImageError``
    otherwise, as a wrong one silently changes every object's size the model sees.
    """
    if not spec.pixel_size_um or pixel_size_um is None:
        return height, width
    low, high = PIXEL_SIZE_RANGE_UM
    if not (math.isfinite(pixel_size_um) and low <= pixel_size_um <= high):
        raise ImageError(source, f"its metadata states a pixel size of {pixel_size_um:g} µm, outside the "
                                 f"plausible {low:g}-{high:g} µm range, so it cannot be rescaled to the "
                                 f"model's {spec.pixel_size_um:g} µm/px. Fix: correct the pixel size in "
                                 "the file's metadata (or strip it if the image is already at the model's scale).")
    # np.isclose's rule (atol 1e-8), written out: np.isclose costs ~20 µs a call, and a whole-field scan
    # asks this several times for every tile
    if abs(pixel_size_um - spec.pixel_size_um) <= 1e-8 + 0.02 * abs(spec.pixel_size_um):
        return height, width
    factor = pixel_size_um / spec.pixel_size_um
    return max(1, round(height * factor)), max(1, round(width * factor))


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
            raise ImageError(source, f"has {n} channel(s) but the model reads channel(s) "
                                     f"{list(spec.channels)}. Fix: supply images with those channels.")
        return image[:, :, list(spec.channels)]
    if n == spec.in_channels:
        return image
    if spec.in_channels == 1 and n == 3 and _is_grey_rgb(image):
        return image[:, :, :1]  # greyscale saved as RGB (common for JPEG): the channels are equal
    raise ImageError(source, f"has {n} channel(s); the model expects {spec.in_channels}. Fix: supply "
                             f"{spec.in_channels}-channel images, or choose channels with preprocess.channels.")


def _is_grey_rgb(image: np.ndarray) -> bool:
    return bool(np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(image[:, :, 0], image[:, :, 2]))


def scale_intensity(image: np.ndarray, spec: PreprocessSpec, source: str = "image",
                    ordered: np.ndarray | None = None) -> np.ndarray:
    """Raw intensities → float32 in [0, 1] by the spec's rule (``ordered``: as ``to_unit_range``)."""
    if spec.bit_depth and _bit_depth(image) != spec.bit_depth:
        raise ImageError(source, f"is {_bit_depth(image)}-bit; the model was trained on "
                                 f"{spec.bit_depth}-bit images. Fix: supply {spec.bit_depth}-bit images.")
    if spec.intensity == "fixed":
        _check_fixed_range(image, source)
        return np.clip(image.astype(np.float32, copy=False) / np.float32(_dtype_max(image)), 0.0, 1.0)
    if spec.percentile_scope == "image":  # measured over the image itself; "field" will pass the field's bounds
        return percentile_normalize(image if image.dtype.kind in "ui" else image.astype(np.float32, copy=False),
                                    spec.percentile_low, spec.percentile_high, ordered)
    raise ConfigError(f"preprocess.percentile_scope={spec.percentile_scope!r} is not implemented")


def _check_fixed_range(image: np.ndarray, source: str) -> None:
    """Fixed intensity takes float pixels as already in [0, 1]: one outside would be clipped (0..4095
    floats become an all-white input that still gets a label), so it is refused by name."""
    if np.issubdtype(image.dtype, np.integer) or image.size == 0:
        return
    lo, hi = float(np.nanmin(image)), float(np.nanmax(image))
    if lo < 0.0 or hi > 1.0:
        raise ImageError(source, f"has float pixel values from {lo:g} to {hi:g}, but this model's fixed "
                                 "intensity scaling reads float pixels as 0..1 (anything outside is clipped). "
                                 "Fix: rescale the image to 0..1, or train with preprocess.intensity=percentile.")


def percentile_normalize(x: np.ndarray, low: float, high: float, ordered: np.ndarray | None = None) -> np.ndarray:
    """Per channel: the ``low`` percentile maps to 0 and ``high`` to 1, clipped to [0, 1].

    A flat channel (high == low) maps to 0 rather than dividing by zero. An integer ``x`` is scaled as
    its float32 values would be (the percentiles from ``channel_percentiles``' sort, the same numbers;
    ``ordered``: ``sorted_values(x)`` if the caller has it).
    """
    flat = x.reshape(-1, x.shape[2])
    if x.dtype.kind in "ui":
        lo, hi = channel_percentiles(flat, (low, high), np.float32, ordered).astype(np.float32)
        x = x.astype(np.float32)
    else:
        lo, hi = np.percentile(flat, [low, high], axis=0).astype(np.float32)
    span = np.where(hi > lo, hi - lo, np.float32(1.0))
    return np.clip((x - lo) / span, 0.0, 1.0).astype(np.float32, copy=False)


def sorted_values(image: np.ndarray) -> np.ndarray | None:
    """Every value of an integer (H, W, C) image, sorted per channel: (H * W, C); None for a float
    image. One sort serves the percentile scaling, the flatness rule and the OOD gate's value checks
    of the same image (``ordered=``), which would each sort it again (issue 17: qc does this for every
    tile of a whole field)."""
    if image.dtype.kind not in "ui":
        return None
    return np.sort(image.reshape(-1, image.shape[2]), axis=0)


def channel_percentiles(values: np.ndarray, percentiles, dtype, ordered: np.ndarray | None = None) -> np.ndarray:
    """Per channel of integer ``values`` (n, C): the ``percentiles`` (0..100), (len, C), exactly
    ``np.percentile(values.astype(dtype), percentiles, axis=0)`` (linear interpolation between order
    statistics, numpy's own lerp), with ``dtype`` float32 or float64 (what numpy computes in for
    integer input).

    Why not np.percentile: uint8 / uint16 values sort by radix, so the sort and two lookups take
    ~0.03 ms for a 128-px tile against ~0.15 ms for np.percentile of its float32 copy; a whole-field
    scan scales every tile (issue 17: qc's throughput against the bare session). Tested equal to
    np.percentile on random data of both depths. ``ordered``: ``values`` already sorted per channel."""
    m = values.shape[0]
    ordered = np.sort(values, axis=0) if ordered is None else ordered
    virtual = (m - 1) * (np.asarray(percentiles, dtype=np.float64) / 100)
    below = np.floor(virtual).astype(np.intp)
    above = np.minimum(below + 1, m - 1)
    gamma = (virtual - below)[:, None]
    a, b = ordered[below].astype(dtype), ordered[above].astype(dtype)
    diff = b - a  # numpy's _lerp: from the nearer end, so that gamma 1 gives b exactly
    out = np.add(a, diff * gamma)
    np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5)
    return out


FLATNESS_PERCENTILES = (1.0, 99.0)  # what may be artefact on a blank frame: up to 1% of its pixels at each end


def flatness_percentiles(spec: PreprocessSpec) -> tuple[float, float]:
    """Where ``flat_channels`` measures: the 1st..99th percentiles, or the spec's when narrower."""
    return max(spec.percentile_low, FLATNESS_PERCENTILES[0]), min(spec.percentile_high, FLATNESS_PERCENTILES[1])


FIXED_FLATNESS_SPREAD = 2.0 / 255.0  # fixed mode: the floor on what the model sees, 2 levels at 8 bits


def flat_channels(image: np.ndarray, spec: PreprocessSpec, pixel_size_um: float | None = None,
                  ordered: np.ndarray | None = None) -> list[int]:
    """Channels (of the selected ones) with no content to read: constant or near-constant, in the
    region the model sees (``seen_region``: with crop_or_pad, the centre crop, not the cropped-off edges).

    Measured between the 1st and 99th percentiles, or the spec's own when they are narrower (so hot
    pixels, dust or a scratch covering up to 1% of a blank frame do not count as content: with the
    spec's 99.8th alone, 3 hot pixels in a 32 x 32 blank frame passed as an image). With percentile
    intensity, on the raw values (percentile scaling would stretch a flat channel's noise to the full
    range and hand the model garbage with a confident look): a spread of at most 2 grey levels for
    integer images (what is left is quantisation, not structure), or of at most 2/65535 of the level
    for float images (the same, at 16 bits of the image's own scale). With fixed intensity, on the
    0..1 values the model gets: a spread of at most 2/255 (a dark 16-bit frame with 20 levels of
    noise is an all-black input, whatever its raw spread). A floor, far below the contrast of real
    (even dim) microscopy. Measured on at most ~2 x 2**14 evenly strided values per channel: plenty
    to tell two grey levels from content, at a cost that does not grow with the image.
    """
    seen = seen_region(image, spec, pixel_size_um)
    values = seen.reshape(-1, seen.shape[2])
    stride = max(1, len(values) // _FLATNESS_SAMPLE)
    values = values[::stride]  # evenly strided: the cost stays per image, not per pixel
    if spec.intensity == "fixed":
        values = np.clip(values.astype(np.float64) / _dtype_max(image), 0.0, 1.0)
    if values.dtype.kind in "ui":
        # ``ordered`` (sorted_values(image), if the caller has it) is this sample when it is every value
        whole = ordered is not None and seen is image and stride == 1
        lo, hi = channel_percentiles(values, flatness_percentiles(spec), np.float64, ordered if whole else None)
    else:
        lo, hi = np.percentile(values, list(flatness_percentiles(spec)), axis=0)
    if spec.intensity == "fixed":
        tolerance = np.full_like(lo, FIXED_FLATNESS_SPREAD)
    elif np.issubdtype(image.dtype, np.integer):
        tolerance = np.full_like(lo, 2.0)
    else:
        tolerance = 2.0 / 65535.0 * np.maximum(1.0, np.maximum(np.abs(lo), np.abs(hi)))
    return [int(c) for c in np.flatnonzero(hi - lo <= tolerance)]


def flatness_rule(spec: PreprocessSpec) -> str:
    """``flat_channels``' rule in words, for the review reason."""
    low, high = flatness_percentiles(spec)
    spread = ("by at most 2/255 of the 0..1 range the model sees" if spec.intensity == "fixed"
              else "by at most 2 grey levels, or 2/65535 of its level if float")
    where = " in the centre crop the model sees" if spec.fit == "crop_or_pad" else ""
    return f"between the {low:g} and {high:g} percentiles{where} it varies {spread}"


def seen_region(image: np.ndarray, spec: PreprocessSpec, pixel_size_um: float | None = None) -> np.ndarray:
    """The part of a (H, W, C) image, before rescaling, that reaches the model: all of it with
    fit=resize; with crop_or_pad the centre crop (an axis longer than the input, once rescaled to the
    model's pixel size, loses its ends)."""
    if spec.fit != "crop_or_pad":
        return image
    shape = image.shape[:2]
    rescaled = rescaled_size(*shape, spec, pixel_size_um)
    cuts = []
    for have, scaled, want in zip(shape, rescaled, spec.size):
        keep = have if scaled <= want else max(1, round(have * want / scaled))
        start = (have - keep) // 2
        cuts.append(slice(start, start + keep))
    return image[cuts[0], cuts[1]]


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

    Separable: rows, then columns, each output a weighted sum of the few input samples under its
    triangle filter (``_taps``: 2-3 taps for the usual shrink, about 2 x the scale for a large one).
    Exact, vectorised and the same on every platform. Why taps and not a dense weight matrix: the
    matrix is almost all zeros, and its two matmuls cost 4-5x more (0.5 vs 0.1 ms for a 128 -> 112 px
    tile, measured; a whole-field scan resizes every tile). Results agree with the dense form to
    float32 rounding (2e-7).
    """
    x = x.astype(np.float32, copy=False)
    idx, weights = _taps(x.shape[0], size[0])
    rows = weights[:, 0, None, None] * x[idx[:, 0]]
    for t in range(1, idx.shape[1]):
        rows += weights[:, t, None, None] * x[idx[:, t]]
    idx, weights = _taps(x.shape[1], size[1])
    out = weights[None, :, 0, None] * rows[:, idx[:, 0]]
    for t in range(1, idx.shape[1]):
        out += weights[None, :, t, None] * rows[:, idx[:, t]]
    return out


@functools.lru_cache(maxsize=128)
def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """(n_out, T) input indices and float32 weights of each output's filter support (contiguous, at most
    T wide); a row with fewer taps pads with weight 0. Cached and read-only: tiles share one size."""
    dense = _bilinear_weights(n_in, n_out)
    nonzero = dense > 0
    first = nonzero.argmax(axis=1)
    idx = first[:, None] + np.arange(int(nonzero.sum(axis=1).max()))[None, :]
    inside = idx < n_in
    idx = np.where(inside, idx, n_in - 1)
    weights = np.where(inside, np.take_along_axis(dense, idx, axis=1), 0.0).astype(np.float32)
    idx.setflags(write=False)
    weights.setflags(write=False)
    return idx, weights


def _bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of a triangle filter widened by the scale when shrinking (antialias)."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale - 0.5
    dist = np.abs(np.arange(n_in)[None, :] - centres[:, None]) / support
    weights = np.clip(1.0 - dist, 0.0, None)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
