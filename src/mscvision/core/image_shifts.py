"""Covariate shifts and artefact frames for measuring the OOD gate (issue 16: scripts/ood_sources.py,
scripts/measure_image_checks.py), numpy only.

Every function takes and returns raw images as decoded ((H, W) or (H, W, C), uint8 / uint16 /
float) and keeps their size and dtype: a shifted image is what the same microscope would have
written, so the station reads it exactly as it reads the original. ``top`` is the value that means
full scale (255 for 8-bit; for 16-bit storage the camera's 2**k - 1): intensities are transformed
relative to it and clipped to [0, top].

- ``gaussian_blur``: separable Gaussian, radius ceil(3 sigma), reflected at the border (defocus).
- ``gamma``: top * (x / top) ** g (a wrong display or camera curve; g < 1 brightens).
- ``fewer_photons``: shot noise of an acquisition with ``factor`` times fewer photons. The photon
  model: the value x is x * full_well / top photo-electrons (full_well: the electrons at full scale;
  by default top, i.e. one electron per grey level, as if the value itself were a photon count).
  With ``factor`` times fewer photons the count is Poisson(x * full_well / top / factor), brought
  back to the original brightness by * factor * top / full_well (the same exposure, amplified):
  the mean is kept, the variance grows ``factor`` times. The original image's own noise is kept
  too (it is small beside the added one).
- ``rescale``: objects ``factor`` times larger (factor > 1: resampled up, centre-cropped back) or
  smaller (factor < 1: resampled down, then mirrored out to the original size: the margin holds
  mirror images of the image's border, standing in for the wider field of view a larger pixel
  would see): a pixel size other than trained that the file does not state, so the station cannot
  rescale it back.
- ``blank_frame`` / ``saturated_frame`` / ``noise_frame``: an empty field (a constant level and a
  half-grey-level of read noise), an all-white frame, uniform noise over the full range.
"""

from __future__ import annotations

import math

import numpy as np

from mscvision.core.preprocess import resize


def as_dtype(values: np.ndarray, dtype: np.dtype, top: float) -> np.ndarray:
    """Float values → ``dtype``, clipped to [0, top] (rounded for integer types)."""
    clipped = np.clip(values, 0.0, top)
    if np.issubdtype(dtype, np.integer):
        return np.round(clipped).astype(dtype)
    return clipped.astype(dtype)


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Blurred float64 copy of ``x`` over its first two axes (a channel axis is left alone)."""
    if sigma <= 0:
        raise ValueError(f"sigma={sigma!r} must be > 0")
    radius = int(math.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    y = np.asarray(x, dtype=np.float64)
    for axis in (0, 1):
        pad = [(radius, radius) if a == axis else (0, 0) for a in range(y.ndim)]
        padded = np.pad(y, pad, mode="reflect")
        n = y.shape[axis]
        y = sum(w * np.take(padded, np.arange(k, k + n), axis=axis) for k, w in enumerate(kernel))
    return y


def blurred(x: np.ndarray, sigma: float, top: float) -> np.ndarray:
    return as_dtype(gaussian_blur(x, sigma), x.dtype, top)


def gamma(x: np.ndarray, g: float, top: float) -> np.ndarray:
    unit = np.clip(np.asarray(x, dtype=np.float64) / top, 0.0, 1.0)
    return as_dtype(top * unit ** g, x.dtype, top)


def fewer_photons(x: np.ndarray, factor: float, top: float, rng: np.random.Generator,
                  full_well: float | None = None) -> np.ndarray:
    """Shot noise of ``factor`` times fewer photons (the photon model: module docstring)."""
    if factor < 1:
        raise ValueError(f"factor={factor!r}: fewer photons means a factor >= 1")
    electrons_per_value = (full_well or top) / top
    counts = rng.poisson(np.clip(np.asarray(x, np.float64), 0.0, None) * electrons_per_value / factor)
    return as_dtype(counts * factor / electrons_per_value, x.dtype, top)


def rescale(x: np.ndarray, factor: float, top: float) -> np.ndarray:
    """Objects ``factor`` times larger (or smaller), at the original image size (module docstring)."""
    hwc = x[:, :, None] if x.ndim == 2 else x
    h, w = hwc.shape[:2]
    target = (max(1, round(h * factor)), max(1, round(w * factor)))
    y = resize(hwc.astype(np.float32), target).astype(np.float64)
    if factor >= 1:
        top_row, left = (target[0] - h) // 2, (target[1] - w) // 2
        y = y[top_row:top_row + h, left:left + w]
    else:
        pads = [((h - target[0]) // 2, h - target[0] - (h - target[0]) // 2),
                ((w - target[1]) // 2, w - target[1] - (w - target[1]) // 2), (0, 0)]
        y = np.pad(y, pads, mode="symmetric")  # symmetric: any pad width, unlike reflect
    out = as_dtype(y, x.dtype, top)
    return out[:, :, 0] if x.ndim == 2 else out


def blank_frame(shape: tuple[int, ...], dtype: np.dtype, top: float, rng: np.random.Generator) -> np.ndarray:
    """An empty field: one level in 10..90% of full scale, half an 8-bit grey level of read noise."""
    level = rng.uniform(0.1, 0.9) * top
    return as_dtype(level + rng.normal(0.0, top / 510.0, shape), dtype, top)


def saturated_frame(shape: tuple[int, ...], dtype: np.dtype, top: float) -> np.ndarray:
    return as_dtype(np.full(shape, float(top)), dtype, top)


def noise_frame(shape: tuple[int, ...], dtype: np.dtype, top: float, rng: np.random.Generator) -> np.ndarray:
    return as_dtype(rng.uniform(0.0, top, shape), dtype, top)
