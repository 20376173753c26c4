"""Image formation: from cell maps to what a camera records.

Phase contrast follows the linear model of Yin et al. (2012): the image is the background minus
(OPD - OPD blurred by the wide phase-ring kernel). Cells are dark where they are thicker than
their surroundings, a bright halo rings them, and wide flat regions fade towards the background
("shade-off") - which is why flattened cells look pale with crisp edges. Very thick or very
refractile objects (rounded cells, lipid droplets) leave the linear range and look bright with a
dark rim; they get their own "bright" map. Absorbing mineral and dust go in a "dark" map.

Then: defocus blur, a per-image tone curve, uneven illumination, exposure/gain/offset, shot and
read noise, quantisation. All are drawn per image independently of class (the donor shifts some
again); the tone curve in particular maps every image onto a random class-blind histogram, so no
global intensity statistic tells a class apart and a model has to look at cells.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from mscvision.synth.organelles import Spots

FULL_SCALE = {8: 255, 16: 65535}


@lru_cache(maxsize=8)
def _freq2(shape: tuple[int, int]) -> np.ndarray:
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    return (fy ** 2 + fx ** 2).astype(np.float32)


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur by FFT (periodic; the canvas margin keeps the wrap away from the image)."""
    if sigma <= 0:
        return img
    kernel = np.exp(-2 * np.pi ** 2 * sigma ** 2 * _freq2(img.shape))
    return np.fft.irfft2(np.fft.rfft2(img) * kernel, s=img.shape).astype(np.float32)


def draw_spots(canvas: np.ndarray, spots: Spots, dome: bool = True, gain: float = 1.0) -> None:
    """Add every spot (an anti-aliased disc, or a sphere's height profile if ``dome``) into ``canvas``.

    All spots are drawn at once: one small window per spot, scattered into the canvas with a
    single ``bincount`` - a Python loop over hundreds of droplets would dominate the frame time.
    """
    y, x, r, a = spots.arrays()
    if y.size == 0:
        return
    half = int(np.ceil(r.max())) + 1
    g = np.arange(-half, half + 1)
    iy, ix = np.floor(y).astype(int), np.floor(x).astype(int)
    gy = iy[:, None, None] + g[None, :, None]
    gx = ix[:, None, None] + g[None, None, :]
    d = np.hypot(gy - y[:, None, None] + 0.5, gx - x[:, None, None] + 0.5)  # pixel centres
    rr = r[:, None, None]
    value = np.clip(rr - d + 0.5, 0, 1)
    if dome:
        value = value * np.sqrt(np.clip(1 - (d / (rr + 0.5)) ** 2, 0, 1)) * 1.3
    value = value * (a * gain)[:, None, None]
    inside = (gy >= 0) & (gy < canvas.shape[0]) & (gx >= 0) & (gx < canvas.shape[1]) & (value != 0)
    flat = np.broadcast_to(gy, value.shape)[inside] * canvas.shape[1] + np.broadcast_to(gx, value.shape)[inside]
    canvas += np.bincount(flat, weights=value[inside], minlength=canvas.size).reshape(canvas.shape).astype(canvas.dtype)


def illumination(rng, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Smooth multiplicative field: a tilt, a vignette and a gentle low-frequency wobble."""
    y, x = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    y = (y - shape[0] / 2) / scale_px
    x = (x - shape[1] / 2) / scale_px
    theta = rng.uniform(0, 2 * np.pi)
    tilt = rng.uniform(0, 0.25) * (np.cos(theta) * x + np.sin(theta) * y)
    vignette = -rng.uniform(0, 0.25) * (x ** 2 + y ** 2)
    wobble = blur(rng.normal(0, 1, shape).astype(np.float32), scale_px / 4)
    wobble *= rng.uniform(0, 0.08) / (wobble.std() + 1e-6)
    return (1 + tilt + vignette + wobble).astype(np.float32)


def phase_contrast(rng, maps: dict, halo: float, texture: float) -> np.ndarray:
    """Relative intensity (background ~ 1) from the opd / bright / dark maps."""
    opd, bright, dark = maps["opd"], maps["bright"], maps["dark"]
    sigma_halo = rng.uniform(4.0, 8.0)
    contrast = rng.uniform(0.45, 0.85) * halo
    img = 1 - contrast * (opd - blur(opd, sigma_halo)) - rng.uniform(0.03, 0.12) * opd
    ring = bright - blur(bright, 1.3)  # positive inside the edge, negative just outside: dark rim
    img += rng.uniform(0.35, 0.7) * bright + rng.uniform(0.5, 1.0) * ring
    img -= rng.uniform(0.35, 0.75) * dark
    mottle = blur(rng.normal(0, 1, opd.shape).astype(np.float32), rng.uniform(1.0, 8.0))
    img += texture * rng.uniform(0.0, 0.05) * mottle / (mottle.std() + 1e-6)
    return blur(img, rng.uniform(0.3, 1.3))  # defocus


def expose(rng, signal: np.ndarray, bit_depth: int) -> np.ndarray:
    """Camera: photons with shot noise, read noise, gain and offset, then integers that clip."""
    photons = np.exp(rng.uniform(np.log(40), np.log(2500)))  # at background level
    counts = rng.poisson(np.clip(signal, 0, None) * photons).astype(np.float32)
    counts += rng.normal(0, rng.uniform(1, 8), signal.shape).astype(np.float32)
    if bit_depth == 8:
        background, offset = rng.uniform(60, 170), rng.uniform(0, 20)
    else:
        background, offset = np.exp(rng.uniform(np.log(1200), np.log(24000))), rng.uniform(100, 600)
    adu = offset + counts * (background / photons)
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return np.clip(np.rint(adu), 0, FULL_SCALE[bit_depth]).astype(dtype)


TONE_LEVELS = np.array([0.2, 1, 3, 10, 25, 50, 75, 90, 97, 99, 99.8])


def _reference_quantiles(rng) -> np.ndarray:
    """Quantiles of a random, class-blind phase-contrast histogram: a background peak at 1 plus a
    dark tail (cell bodies) and a bright tail (halos, refractile objects) of random weights."""
    k = 4000
    spread = rng.uniform(0.02, 0.08)
    dark = 1 - spread - rng.exponential(rng.uniform(0.1, 0.4), int(k * rng.uniform(0.1, 0.6)))
    bright = 1 + spread + rng.exponential(rng.uniform(0.1, 0.5), int(k * rng.uniform(0.1, 0.6)))
    return np.percentile(np.concatenate([rng.normal(1.0, spread, k), dark, bright]), TONE_LEVELS)


def fluorescence_tone(rng, rel: np.ndarray) -> np.ndarray:
    """Exposure and gamma for a dark-field channel: its 99.5th percentile lands at a random level.

    Full histogram matching (as for phase) would lift the dark background whenever the stained
    area is small, so fluorescence only gets a class-blind exposure and gamma.
    """
    top = np.percentile(rel, 99.5) + 1e-6
    return (rng.uniform(0.6, 3.0) * np.clip(rel / top, 0, None) ** rng.uniform(0.7, 1.4)).astype(np.float32)


def tone_curve(rng, rel: np.ndarray) -> np.ndarray:
    """Monotone per-image tone curve onto a class-blind reference histogram.

    Acquisition software applies auto-contrast and gamma per image; here the curve is drawn
    independently of class and maps the image's own quantiles onto it. Rank order - and with it
    every edge, shape and texture - is kept; the global histogram no longer reveals the class.
    """
    own = np.percentile(rel, TONE_LEVELS)
    own = own + np.arange(len(own)) * 1e-6  # strictly increasing for interpolation
    target = np.sort(_reference_quantiles(rng))
    target = np.maximum(target, 0.02)
    out = np.interp(rel, own, target)
    lo, hi = own[0], own[-1]  # beyond the outer knots keep the slope of the last segment
    out = np.where(rel < lo, target[0] + (rel - lo) * (target[1] - target[0]) / (own[1] - own[0] + 1e-9), out)
    out = np.where(rel > hi, target[-1] + (rel - hi) * (target[-1] - target[-2]) / (own[-1] - own[-2] + 1e-9), out)
    return out.astype(np.float32)
