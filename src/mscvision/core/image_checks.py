"""Image checks: measures of how unlike the training images one image is (issue 16 item 1).

The same numpy code runs at training-time evaluation, at export (calibration) and at the station.
Every check is a score oriented so that HIGHER = MORE UNUSUAL; it becomes a conformal p-value
against the scores of held-out in-distribution images (``core/conformal.py``), so no threshold is
tuned by hand and each check's in-distribution false-alarm rate is its share of alpha.

Measured on what the station has:
- ``raw``: the decoded image with the model's channels selected (``preprocess.select_channels``),
  its own dtype, (H, W, C). Exposure, clipping and emptiness are judged here, on values normalised
  by the bit depth's full scale: percentile scaling would stretch a dim or an over-exposed frame
  back to 0..1 and hide the change.
- ``unit``: what the model sees before standardisation (``preprocess.to_unit_range``: float32
  (h, w, C) in [0, 1]). Part of the signature so that a check of the model's own view needs no new
  plumbing; no check reads it now (see focus for why focus does not).

The checks (``CHECKS``):
- ``focus_low`` / ``focus_high``: focus = var(Laplacian) / var(gradient) of the raw image at its
  native resolution (the central FOCUS_WINDOW px): the finest scale's energy against the next,
  free of contrast and exposure, and less dependent on how many cells are in view than
  var(Laplacian) / var(image). On the raw image, not the unit image: resizing to the model's input
  (64 -> 48 px for MitoCheck, antialiased) already removes the scale at which defocus shows. On
  MitoCheck crops (scripts/measure_image_checks.py) this measure flagged 87% / 100% of sigma 1 / 2 px
  blurs against 21% / 51% for var(Laplacian(unit)) / var(unit), at an in-distribution rate near its
  share of alpha (0.7% at 0.42%, against 5.7%: that one varied more between wells than calibration
  covered). The cost: an image at another stated pixel size that the station rescales has another
  native focus, so it may be flagged (review, never a false ok).
  Both ends are unusual: defocus or blur lowers focus, noise raises it. Two one-sided checks rather
  than one |log(focus / median)|: each tail is calibrated on its own (log-focus is not symmetric
  between blur and noise), and each names its cause; the price is one more share of alpha.
- ``saturated``: fraction of raw values at or above the full scale (the dtype's maximum, or for
  16-bit storage the smallest standard camera depth, 10/12/14/16-bit, holding every training value).
- ``zero_clipped``: fraction of raw values at or below 0.
- ``empty``: -log of the raw spread (1st..99th percentile, as a fraction of full scale): an empty or
  near-constant field has almost none.
- ``histogram``: Jensen-Shannon divergence (bits) between the image's raw-intensity histogram and
  the training images' mean, over equal-mass bins of the pooled training values (linear bins over
  a 16-bit range would put a dim camera's every pixel in two bins).

Deterministic rules (``rule_reasons``): a bit depth, or a stated pixel size, other than trained.
They never fire on an in-distribution image, so they spend no alpha; they give a reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mscvision.core.preprocess import PreprocessSpec, _bit_depth, select_channels, to_unit_range

REFERENCE_VERSION = 1
CHECKS = ("focus_low", "focus_high", "saturated", "zero_clipped", "empty", "histogram")
HISTOGRAM_BINS = 32
SPREAD_PERCENTILES = (1.0, 99.0)
CAMERA_DEPTHS_16 = (10, 12, 14, 16)  # depths a camera stores in uint16; full scale 2**k - 1
PIXEL_SIZE_RTOL = 0.02  # as preprocess.rescaled_size: closer than this is the same pixel size
FOCUS_WINDOW = 512  # px a side: focus of the central window, so the cost does not grow with the field
_SAMPLE = 2**16  # raw values measured per channel, evenly strided: the cost stays per image
_TINY = 1e-12


def fit_reference(raw_images: Sequence[np.ndarray], bit_depths: Sequence[int],
                  pixel_sizes_um: Sequence[float | None] | None = None) -> dict:
    """The reference (JSON-able) that ``measure`` and ``rule_reasons`` compare with, from training
    images (raw, the model's channels selected). ``bit_depths``: the training bit depths (the
    depths of ``raw_images`` are added); ``pixel_sizes_um``: what the training files stated, if known."""
    if not raw_images:
        raise ValueError("fit_reference needs at least one training image")
    images = [_hwc(x) for x in raw_images]
    channels = {x.shape[2] for x in images}
    if len(channels) != 1:
        raise ValueError(f"training images have {sorted(channels)} channels; select the model's channels first")
    depths = sorted({int(d) for d in bit_depths} | {_bit_depth(x) for x in images})
    scales = {str(d): _fitted_full_scale(d, [x for x in images if _bit_depth(x) == d]) for d in depths}
    reference = {"version": REFERENCE_VERSION, "channels": channels.pop(), "bit_depths": depths,
                 "full_scale": scales, "n_images": len(images),
                 "pixel_sizes_um": sorted({round(float(s), 6) for s in pixel_sizes_um or ()
                                           if s is not None and math.isfinite(s)})}
    pooled = np.concatenate([np.clip(_sample(x) / full_scale(x, reference), 0.0, 1.0) for x in images])
    edges = [_equal_mass_edges(pooled[:, c]) for c in range(pooled.shape[1])]
    reference["histogram_edges"] = [e.tolist() for e in edges]
    reference["histogram_mean"] = [np.mean([_channel_values(x, c, reference).histogram(e) for x in images],
                                           axis=0).tolist() for c, e in enumerate(edges)]
    return reference


def measure(raw: np.ndarray, unit: np.ndarray, reference: dict, ordered: np.ndarray | None = None) -> dict[str, float]:
    """Every check's score for one image (``CHECKS`` order; higher = more unusual). ``ordered``:
    ``preprocess.sorted_values(raw)`` when the caller has it (one sort per image for scaling and checks)."""
    raw = _hwc(raw)
    if raw.shape[2] != reference["channels"] or unit.ndim != 3 or unit.shape[2] != raw.shape[2]:
        raise ValueError(f"raw {raw.shape} / unit {unit.shape}: both need the model's {reference['channels']} "
                         "channel(s), channels last (select the model's channels before measuring)")
    floor = _spread_floor(raw, full_scale(raw, reference))
    per_channel = []  # each channel's scores; the image's is the most unusual channel's
    for c, (edges, mean) in enumerate(zip(reference["histogram_edges"], reference["histogram_mean"])):
        values = _channel_values(raw, c, reference, ordered)
        focus = _focus(_central(raw[:, :, c], FOCUS_WINDOW))
        per_channel.append({"focus_low": -math.log(focus + _TINY), "focus_high": math.log(focus + _TINY),
                            "saturated": values.share_at_least(1.0), "zero_clipped": values.share_at_most(0.0),
                            "empty": -math.log(values.spread() + floor),
                            "histogram": _jensen_shannon(values.histogram(np.asarray(edges)), np.asarray(mean))})
    return {check: float(max(scores[check] for scores in per_channel)) for check in CHECKS}


def measure_image(array: np.ndarray, spec: PreprocessSpec, pixel_size_um: float | None, reference: dict,
                  source: str = "image") -> dict[str, float]:
    """``measure`` from a decoded (H, W, C) array: the model's channels selected and ``to_unit_range``
    run here, exactly as the station does (for export's calibration and training-time evaluation)."""
    raw = select_channels(array, spec, source)
    with np.errstate(over="ignore", invalid="ignore"):
        unit = to_unit_range(array, spec, pixel_size_um, source)
    return measure(raw, unit, reference)


def rule_reasons(bit_depth: int, pixel_size_um: float | None, reference: dict, rescaled: bool = False) -> list[str]:
    """Reasons from the deterministic rules: another bit depth, or a stated pixel size other than the
    training images' (unless the station rescales it to the model's, ``rescaled``)."""
    reasons = []
    depths = reference.get("bit_depths") or []
    if depths and bit_depth not in depths:
        reasons.append(f"it is {bit_depth}-bit; the model was trained on {'/'.join(map(str, depths))}-bit images")
    trained = reference.get("pixel_sizes_um") or []
    if (trained and not rescaled and pixel_size_um is not None and math.isfinite(pixel_size_um)
            and not any(math.isclose(pixel_size_um, s, rel_tol=PIXEL_SIZE_RTOL) for s in trained)):
        reasons.append(f"its pixel size {pixel_size_um:g} µm differs from the training images' "
                       f"{'/'.join(f'{s:g}' for s in trained)} µm (objects appear at another scale)")
    return reasons


def check_reason(name: str, score: float, p: float, typical: float, level: float | None = None) -> str:
    """One check's reason in words: the measured value against the training images' typical one
    (``typical``: the median calibration score), the p-value and the level it fell below."""
    tail = f"p={p:.2g}" + (f" <= {level:.2g}" if level is not None else "")
    if name == "focus_low":
        return (f"focus {_focus_value(-score):.3g} far below the training images' (typical "
                f"{_focus_value(-typical):.3g}; {tail}): defocused or blurred")
    if name == "focus_high":
        return (f"focus {_focus_value(score):.3g} far above the training images' (typical "
                f"{_focus_value(typical):.3g}; {tail}): noise, or a texture the model was not trained on")
    if name == "saturated":
        return f"{score:.1%} of pixels saturated (training images: typically {typical:.1%}; {tail})"
    if name == "zero_clipped":
        return f"{score:.1%} of pixels clipped at 0 (training images: typically {typical:.1%}; {tail})"
    if name == "empty":
        return (f"intensity spread {math.exp(-score):.3g} of full scale, far below the training images' "
                f"(typical {math.exp(-typical):.3g}; {tail}): an empty or near-constant field")
    if name == "histogram":
        return (f"intensity histogram far from the training images' (Jensen-Shannon {score:.3f} bits, typical "
                f"{typical:.3f}; {tail}): another exposure, gain, camera or stain")
    return f"{name} score {score:.4g} (typical {typical:.4g}; {tail})"


def _focus_value(log_focus: float) -> float:
    """focus from its score's log(focus + _TINY): 0 for a constant image, not 1e-12."""
    return max(0.0, math.exp(log_focus) - _TINY)


def full_scale(raw: np.ndarray, reference: dict) -> float:
    """The value that means "saturated" for this image: the reference's for its bit depth, else the
    dtype's maximum (1.0 for float images, which the model takes as 0..1)."""
    depth = _bit_depth(raw)
    fitted = reference.get("full_scale", {}).get(str(depth))
    return float(fitted) if fitted else _dtype_full_scale(depth)


def _fitted_full_scale(depth: int, images: list[np.ndarray]) -> float:
    """For uint16: the smallest camera depth holding every training value (a 12-bit camera saturates
    at 4095, not 65535); for float: the largest training value (at least 1); else the dtype's."""
    if not images:
        return _dtype_full_scale(depth)
    top = max(float(x.max()) for x in images)
    if depth == 16:
        return float(next(2**k - 1 for k in CAMERA_DEPTHS_16 if top <= 2**k - 1))
    if depth == 32:
        return max(1.0, top)
    return _dtype_full_scale(depth)


def _dtype_full_scale(depth: int) -> float:
    return {8: 255.0, 16: 65535.0}.get(depth, 1.0)


def _spread_floor(raw: np.ndarray, scale: float) -> float:
    """Half a grey level for integer images (a constant frame's spread is 0, and log(0) is not a
    score); a float image's 2**-17 of full scale."""
    return 0.5 / scale if np.issubdtype(raw.dtype, np.integer) else 2.0**-17


def _hwc(x: np.ndarray) -> np.ndarray:
    return x[:, :, None] if x.ndim == 2 else x


def _sample(raw: np.ndarray) -> np.ndarray:
    flat = raw.reshape(-1, raw.shape[2])
    return flat[::max(1, len(flat) // _SAMPLE)]


@dataclass(frozen=True)
class _Values:
    """One channel's sampled raw values, sorted, as fractions of full scale (not clipped): one sort
    (a radix sort for uint8 / uint16, ~0.03 ms for a 128-px tile) serves every value check by binary
    search; counting distinct levels and binning them cost ~0.15 ms a tile (issue 17: qc measures
    every tile of a whole field). The same shares, spread and histogram as counting them."""

    levels: np.ndarray  # ascending (NaN last, as np.sort puts it)

    def share_at_least(self, level: float) -> float:
        return float((len(self.levels) - np.searchsorted(self.levels, level, side="left")) / len(self.levels))

    def share_at_most(self, level: float) -> float:
        return float(np.searchsorted(self.levels, level, side="right") / len(self.levels))

    def spread(self) -> float:
        """From the SPREAD_PERCENTILES' low to high one (nearest rank, as ``np.percentile``'s inverted_cdf)."""
        n = len(self.levels)
        low, high = (self.levels[max(0, math.ceil(q / 100.0 * n) - 1)] for q in SPREAD_PERCENTILES)
        return float(high - low)

    def histogram(self, edges: np.ndarray) -> np.ndarray:
        """Share of values per bin of [0, 1] (clipped); a value on an inner edge belongs to the bin above."""
        cuts = np.searchsorted(np.clip(self.levels, 0.0, 1.0), edges[1:-1], side="left")
        return np.diff(np.concatenate([[0], cuts, [len(self.levels)]])) / len(self.levels)


def _channel_values(raw: np.ndarray, channel: int, reference: dict, ordered: np.ndarray | None = None) -> _Values:
    sample = _sample(raw)
    if ordered is not None and len(sample) == len(ordered):  # the sample is every value: sorted already
        values = ordered[:, channel]
    elif sample.dtype.kind in "ui":
        values = np.sort(sample[:, channel])
    else:
        values = np.sort(sample[:, channel].astype(np.float64))
    return _Values(values / full_scale(raw, reference))


def _central(x: np.ndarray, side: int) -> np.ndarray:
    top, left = max(0, (x.shape[0] - side) // 2), max(0, (x.shape[1] - side) // 2)
    return x[top:top + side, left:left + side]


def _focus(x: np.ndarray) -> float:
    """var(4-neighbour Laplacian) / var(forward differences, both axes): 0 for a constant image or
    one too small (under 3 px a side) to have an interior. In float32 (a ratio needs a few digits;
    it halves the station's cost), the two difference images pooled without copying them."""
    u = x.astype(np.float32)
    if min(u.shape) < 3:
        return 0.0
    lap = (u[1:-1, :-2] + u[1:-1, 2:]) + (u[:-2, 1:-1] + u[2:, 1:-1]) - 4.0 * u[1:-1, 1:-1]
    dy, dx = u[1:] - u[:-1], u[:, 1:] - u[:, :-1]
    n = dy.size + dx.size
    mean = (float(dy.sum(dtype=np.float64)) + float(dx.sum(dtype=np.float64))) / n
    variance = (float(np.vdot(dy, dy)) + float(np.vdot(dx, dx))) / n - mean * mean
    return float(lap.var(dtype=np.float64)) / variance if variance > _TINY else 0.0


def _equal_mass_edges(values: np.ndarray) -> np.ndarray:
    """HISTOGRAM_BINS bins holding equal shares of the pooled training values (fewer where values
    repeat: 8-bit data has few levels); the outer edges are 0 and 1."""
    inner = np.unique(np.quantile(values, np.linspace(0, 1, HISTOGRAM_BINS + 1)[1:-1]))
    inner = inner[(inner > 0.0) & (inner < 1.0)]
    return np.concatenate([[0.0], inner, [1.0]])


def _jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits: 0 for equal histograms, 1 for disjoint ones."""
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return 0.5 * kl(p) + 0.5 * kl(q)
