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
- ``scale_profile`` (reference version 2): how the image's structure is spread over scales, against
  the training images', as one Mahalanobis distance. The central window's Haar pyramid
  (``SCALE_LEVELS`` levels: detail at 1, 2 and 4 px, native pixel grid) gives per level its share of
  the detail energy, its sparsity (mean |coefficient| / root-mean-square), the horizontal / vertical
  energy ratio and the diagonal share: 4 * levels - 1 numbers, all free of contrast and exposure,
  whose training mean and covariance (ridge ``SCALE_RIDGE``) the reference stores. Objects 2x larger
  or smaller (a pixel size other than trained, unstated), blur, photon noise, and images of another
  kind (a photograph's 1/f textures) all move energy between scales or change its sparsity. The
  station's ``pixel size other than trained`` as a measure, not only a stated rule.
- ``noise_high`` (reference version 2): the finest scale's noise, sigma = median |diagonal Haar
  detail| / 0.6745 (Donoho's estimator: sparse edges barely move a median), as a fraction of full
  scale; higher than the training images' = fewer photons, more gain, another camera. focus_high
  sees noise too, but as a ratio to the next scale, which textured training images also raise.

Deterministic rules (``rule_reasons``): a bit depth, or a stated pixel size, other than trained.
They never fire on an in-distribution image, so they spend no alpha; they give a reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mscvision.core.preprocess import PreprocessSpec, _bit_depth, select_channels, to_unit_range

# 2 adds scale_profile and noise_high; a version 1 reference (models exported before) is still
# measured, with its own six checks
REFERENCE_VERSION = 2
READABLE_VERSIONS = (1, 2)
CHECKS = ("focus_low", "focus_high", "saturated", "zero_clipped", "empty", "histogram", "scale_profile", "noise_high")
CHECKS_V1 = CHECKS[:6]
SCALE_LEVELS = 3  # Haar levels of the scale profile: detail at 1, 2 and 4 px (a 4th, 8 px, changed
#   no flag rate by more than 4 points on the sources of README's table and cost 0.011 ms a tile)
SCALE_RIDGE = 1e-3  # on the scale profile's covariance, as a fraction of its mean eigenvalue
MAD_TO_SIGMA = 0.6745  # median |x| of a standard normal: Donoho's noise estimator
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
    levels = min(SCALE_LEVELS, int(math.log2(min(min(x.shape[:2]) for x in images) + 0.5)))
    if levels >= 2:  # under two levels there is no profile to compare
        reference["scale_profile"] = _fit_scale_profile(images, levels, reference)
    return reference


def _fit_scale_profile(images: list[np.ndarray], levels: int, reference: dict) -> dict:
    """Per channel the training images' scale-profile mean and the whitening factor W of its
    ridge-regularised covariance's inverse (W Wᵀ = the precision matrix)."""
    means, whitenings = [], []
    for c in range(reference["channels"]):
        vectors = np.array([_haar_statistics(_window(x, c), levels, full_scale(x, reference))[0] for x in images])
        covariance = (np.atleast_2d(np.cov(vectors, rowvar=False)) if len(vectors) > 1
                      else np.zeros((vectors.shape[1],) * 2))
        covariance += SCALE_RIDGE * max(np.trace(covariance) / len(covariance), 1e-6) * np.eye(len(covariance))
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        means.append(vectors.mean(axis=0).tolist())
        whitenings.append((eigenvectors / np.sqrt(eigenvalues)).tolist())
    return {"levels": levels, "ridge": SCALE_RIDGE, "mean": means, "whitening": whitenings}


def measure(raw: np.ndarray, unit: np.ndarray, reference: dict, ordered: np.ndarray | None = None) -> dict[str, float]:
    """Every check's score for one image (``CHECKS`` order; higher = more unusual). ``ordered``:
    ``preprocess.sorted_values(raw)`` when the caller has it (one sort per image for scaling and checks)."""
    return measure_many([raw], [unit], reference, [ordered])[0]


def measure_many(raws: Sequence[np.ndarray], units: Sequence[np.ndarray], reference: dict,
                 ordered: Sequence[np.ndarray | None] | None = None) -> list[dict[str, float]]:
    """``measure`` of several images: the one implementation (one image is a list of one). The Haar
    pyramid of same-sized windows runs as one array (qc measures the tiles of a field 16 at a time: on a
    128-px tile its three levels' many small numpy calls cost more in overhead than in arithmetic); every
    statistic is still each image's own, so an image's scores do not depend on the others."""
    ordered = list(ordered) if ordered is not None else [None] * len(raws)
    checks = reference_checks(reference)
    profile = reference.get("scale_profile") if "scale_profile" in checks else None
    per_image, windows = [], []  # each image's per-channel scores; (image, channel, window, full scale)
    for i, (raw, unit) in enumerate(zip(raws, units, strict=True)):
        raw = _hwc(raw)
        if raw.shape[2] != reference["channels"] or unit.ndim != 3 or unit.shape[2] != raw.shape[2]:
            raise ValueError(f"raw {raw.shape} / unit {unit.shape}: both need the model's {reference['channels']} "
                             "channel(s), channels last (select the model's channels before measuring)")
        scale = full_scale(raw, reference)
        floor = _spread_floor(raw, scale)
        per_channel = []  # the image's score is its most unusual channel's
        for c, (edges, mean) in enumerate(_histogram_reference(reference)):
            values = _channel_values(raw, c, reference, ordered[i])
            window = _window(raw, c)
            focus = _focus(window)
            per_channel.append({"focus_low": -math.log(focus + _TINY), "focus_high": math.log(focus + _TINY),
                                "saturated": values.share_at_least(1.0), "zero_clipped": values.share_at_most(0.0),
                                "empty": -math.log(values.spread() + floor),
                                "histogram": _jensen_shannon(values.histogram(edges), mean)})
            if "noise_high" in checks:
                windows.append((i, c, window, scale))
        per_image.append(per_channel)
    levels = profile["levels"] if profile else 1
    for group in _same_shape(windows):
        vectors, noises = _haar_statistics_many(np.stack([w for _, _, w, _ in group]), levels)
        for (i, c, _, scale), vector, noise in zip(group, vectors, noises):
            scores = per_image[i][c]
            scores["noise_high"] = noise / scale
            if profile:
                scores["scale_profile"] = _scale_distance(_scale_vector(vector, levels, scale), profile, c)
    return [{check: float(max(scores[check] for scores in per_channel)) for check in checks}
            for per_channel in per_image]


def _same_shape(windows: list[tuple]) -> list[list[tuple]]:
    """The windows grouped by shape, in order of first appearance (tiles of one field share one)."""
    groups: dict[tuple[int, ...], list[tuple]] = {}
    for item in windows:
        groups.setdefault(item[2].shape, []).append(item)
    return list(groups.values())


def reference_checks(reference: dict) -> tuple[str, ...]:
    """The checks ``measure`` gives for this reference: a version 1 reference's six; version 2 adds
    noise_high, and scale_profile when the training images were large enough to fit one."""
    if reference.get("version", 1) < 2:
        return CHECKS_V1
    return tuple(c for c in CHECKS if c != "scale_profile" or "scale_profile" in reference)


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
    if name == "scale_profile":
        return (f"structure across scales unlike the training images' (Mahalanobis distance {score:.3g}, typical "
                f"{typical:.3g}; {tail}): objects at another scale (a pixel size or magnification other than "
                "trained), blur or noise, or another kind of image")
    if name == "noise_high":
        return (f"noise {score:.2%} of full scale, far above the training images' (typical {typical:.2%}; {tail}): "
                "fewer photons, more gain or another camera")
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
        numbers = np.searchsorted(self.levels, np.inf, side="right")  # NaN (sorted last) is at least nothing
        return float((numbers - np.searchsorted(self.levels, level, side="left")) / len(self.levels))

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
    it halves the station's cost), the two difference images pooled without copying them; the
    Laplacian's variance as the gradients' (mean square minus squared mean: within 4e-6 of
    ``var(dtype=float64)`` on 970 8- and 16-bit images, ~6 us less on a 128-px tile)."""
    u = x.astype(np.float32, copy=False)
    if min(u.shape) < 3:
        return 0.0
    lap = (u[1:-1, :-2] + u[1:-1, 2:]) + (u[:-2, 1:-1] + u[2:, 1:-1]) - 4.0 * u[1:-1, 1:-1]
    dy, dx = u[1:] - u[:-1], u[:, 1:] - u[:, :-1]
    n = dy.size + dx.size
    mean = (float(dy.sum(dtype=np.float64)) + float(dx.sum(dtype=np.float64))) / n
    variance = (float(np.vdot(dy, dy)) + float(np.vdot(dx, dx))) / n - mean * mean
    lap_mean = float(lap.sum(dtype=np.float64)) / lap.size
    lap_variance = max(float(np.vdot(lap, lap)) / lap.size - lap_mean * lap_mean, 0.0)
    return lap_variance / variance if variance > _TINY else 0.0


def _window(raw: np.ndarray, channel: int) -> np.ndarray:
    """The central FOCUS_WINDOW px of one channel in float32, on the native pixel grid: what focus,
    the scale profile and the noise estimate read."""
    return _central(_hwc(raw)[:, :, channel], FOCUS_WINDOW).astype(np.float32)


def _haar_statistics(u: np.ndarray, levels: int, scale: float) -> tuple[np.ndarray, float]:
    """The scale profile's vector and the finest level's noise sigma (raw units) of one float32 window
    (``_haar_statistics_many`` of one)."""
    sums, noises = _haar_statistics_many(u[None], levels)
    return _scale_vector(sums[0], levels, scale), float(noises[0])


def _haar_statistics_many(u: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per window of an (n, h, w) float32 stack: the Haar sums ``_scale_vector`` turns into the scale
    profile, (n, levels, 4): per level the horizontal, vertical and diagonal detail energies and the
    sum of |details|, in the mean image's units; and the finest level's noise sigma, (n,).

    Per Haar level j (2x2 blocks a b / c d; h, v, d the horizontal, vertical and diagonal details
    a+b-c-d, a-b+c-d, a-b-c+d). The noise sigma is the median of a quarter of the finest diagonal
    details (every other row and column: a quarter of the partition's cost, a few percent noisier),
    / 0.6745 (Donoho). A window too small for ``levels`` gives NaN (not measured: flagged by the gate).
    The next level is the 2x2 block sum, not the mean (one operation less a level): level j's details
    are 4**j times the mean's, undone on the energies (16**j) and the absolute values (4**j); exact in
    float32 for 16-bit values up to level 3 (64 * 65535 < 2**24). Every reduction runs over each
    window's own contiguous block, so a window's numbers do not depend on the others in the stack."""
    n = u.shape[0]
    sums = np.full((n, levels, 4), math.nan)
    noise = np.full(n, math.nan)
    for level in range(levels):
        h, w = u.shape[1] & ~1, u.shape[2] & ~1
        if h == 0 or w == 0:
            return np.full((n, levels, 4), math.nan), noise
        rows_sum, rows_diff = u[:, 0:h:2] + u[:, 1:h:2], u[:, 0:h:2] - u[:, 1:h:2]  # a+b, c+d / a-b, c-d
        details = np.empty((n, 3, h // 2, w // 2), np.float32)  # twice the orthonormal h, v, d coefficients
        np.subtract(rows_sum[:, :, 0:w:2], rows_sum[:, :, 1:w:2], out=details[:, 0])
        np.add(rows_diff[:, :, 0:w:2], rows_diff[:, :, 1:w:2], out=details[:, 1])
        np.subtract(rows_diff[:, :, 0:w:2], rows_diff[:, :, 1:w:2], out=details[:, 2])
        count = 4.0 * details[0, 0].size * 16.0 ** level  # per block, in the mean image's units
        flat = details.reshape(n, 3, -1)
        # energies as a batched matmul of each detail with itself: bitwise np.vdot's, which the scale
        # profiles of earlier exports were calibrated with (einsum's float32 sums drifted by 6e-5 on a
        # 512-px window); divided in float64, as before
        energies = np.matmul(flat[:, :, None, :], flat[:, :, :, None])[:, :, 0, 0]
        sums[:, level, :3] = energies.astype(np.float64) / count
        np.abs(details, out=details)
        sums[:, level, 3] = details.reshape(n, -1).sum(axis=1).astype(np.float64) / (1.5 * count / 4.0 ** level)
        if level == 0:  # median |orthonormal diagonal coefficient| / 0.6745
            diagonal = details[:, 2, ::2, ::2].reshape(n, -1)
            half = diagonal.shape[1] // 2
            noise = 0.5 * np.partition(diagonal, half, axis=1)[:, half].astype(np.float64) / MAD_TO_SIGMA
        u = rows_sum[:, :, 0:w:2] + rows_sum[:, :, 1:w:2]
    return sums, noise


def _scale_vector(sums: np.ndarray, levels: int, scale: float) -> np.ndarray:
    """One window's (levels, 4) Haar sums → the scale profile's 4 * levels - 1 numbers: log(E_j / sum E)
    (all levels but the coarsest: the shares sum to one), log(mean |detail| / rms detail) (sparsity),
    log(E_h / E_v) and log(E_d / (E_h + E_v)). Floors of 1e-6 of full scale keep a constant window
    finite; NaN sums (a window too small) give NaN."""
    e_floor, l1_floor = (1e-6 * scale) ** 2, 1e-6 * scale
    eh, ev, ed, l1 = sums[:, 0], sums[:, 1], sums[:, 2], sums[:, 3]
    energy = eh + ev + ed
    energies = energy + e_floor
    with np.errstate(invalid="ignore"):
        shares = np.log(energies / energies.sum())[:-1]
        rows = np.stack([np.log((l1 + l1_floor) / np.sqrt(energy / 3.0 + e_floor)),
                         np.log((eh + e_floor) / (ev + e_floor)), np.log((ed + e_floor) / (eh + ev + 2 * e_floor))])
    return np.concatenate([shares, rows.ravel()])


_ARRAYS: dict[int, tuple[dict, object]] = {}


def _arrays_of(block: dict, build):
    """``build(block)``: a reference's lists as numpy arrays, made once per reference block (the
    station asks for them per tile of a whole field) and cached by identity (the entry keeps the
    block alive, so its id is not reused)."""
    cached = _ARRAYS.get(id(block))
    if cached is None or cached[0] is not block:
        if len(_ARRAYS) > 32:
            _ARRAYS.clear()
        cached = _ARRAYS[id(block)] = (block, build(block))
    return cached[1]


def _histogram_reference(reference: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per channel the histogram check's (edges, training mean) as arrays."""
    return _arrays_of(reference, lambda r: [(np.asarray(e, np.float64), np.asarray(m, np.float64))
                                            for e, m in zip(r["histogram_edges"], r["histogram_mean"])])


def _scale_distance(vector: np.ndarray, profile: dict, channel: int) -> float:
    """Mahalanobis distance of a scale-profile vector to the training images' (NaN stays NaN)."""
    means, whitenings = _arrays_of(profile, lambda p: ([np.asarray(m, np.float64) for m in p["mean"]],
                                                       [np.asarray(w, np.float64) for w in p["whitening"]]))
    z = (vector - means[channel]) @ whitenings[channel]
    return float(math.sqrt(np.dot(z, z)))


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
