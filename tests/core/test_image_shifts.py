"""The covariate shifts and artefact frames of the OOD sources keep size and dtype and do what they say."""

from __future__ import annotations

import numpy as np
import pytest

from mscvision.core import image_shifts as shifts


def test_blur_keeps_a_constant_and_spreads_a_point_as_a_gaussian():
    flat = np.full((20, 20), 100, np.uint8)
    assert np.array_equal(shifts.blurred(flat, 2.0, 255.0), flat)
    point = np.zeros((41, 41))
    point[20, 20] = 1.0
    y = shifts.gaussian_blur(point, 2.0)
    assert y.sum() == pytest.approx(1.0)
    # the centre row of a separable Gaussian: exp(-d^2 / (2 sigma^2)), relative to its peak
    assert y[20, 22] / y[20, 20] == pytest.approx(np.exp(-4 / 8), rel=1e-6)


def test_gamma_maps_full_scale_relative_values():
    x = np.array([[0, 64, 255]], np.uint8)
    assert shifts.gamma(x, 2.0, 255.0).tolist() == [[0, round(255 * (64 / 255) ** 2), 255]]
    assert shifts.gamma(x, 0.5, 255.0).tolist() == [[0, round(255 * (64 / 255) ** 0.5), 255]]


def test_fewer_photons_keeps_the_mean_and_multiplies_the_variance():
    x = np.full((200, 200), 100, np.uint16)
    y = shifts.fewer_photons(x, 10.0, 4095.0, np.random.default_rng(0), full_well=40950.0)
    # 10 electrons per level: 1000 electrons; a tenth, 100, has Poisson variance 100 electrons^2, brought back
    # by * 10 / 10 = 1 level per electron: variance 100 levels^2 (it was 0)
    assert y.dtype == np.uint16 and y.mean() == pytest.approx(100, abs=0.2)
    assert y.var() == pytest.approx(100, rel=0.1)
    with pytest.raises(ValueError):
        shifts.fewer_photons(x, 0.5, 4095.0, np.random.default_rng(0))


def test_rescale_zooms_about_the_centre_and_keeps_the_size():
    x = np.zeros((32, 32), np.uint8)
    x[14:18, 14:18] = 200  # a 4 px square in the centre
    zoomed, shrunk = shifts.rescale(x, 2.0, 255.0), shifts.rescale(x, 0.5, 255.0)
    assert zoomed.shape == shrunk.shape == (32, 32) and zoomed.dtype == np.uint8
    assert (zoomed > 100).sum() == pytest.approx(64, abs=12)  # 8 px a side
    assert 0 < (shrunk[8:24, 8:24] > 100).sum() <= 9  # the shrunk image, 2 px a side, in the central 16 px
    assert shrunk[16, 16] > 100 and zoomed[16, 16] == 200
    assert np.array_equal(shifts.rescale(x[:, :, None], 0.5, 255.0)[:, :, 0], shrunk)  # a channel axis is kept


def test_artefact_frames():
    rng = np.random.default_rng(0)
    blank = shifts.blank_frame((16, 16), np.dtype(np.uint8), 255.0, rng)
    assert blank.dtype == np.uint8 and blank.max() - blank.min() <= 3
    assert (shifts.saturated_frame((16, 16, 2), np.dtype(np.uint16), 4095.0) == 4095).all()
    noise = shifts.noise_frame((64, 64), np.dtype(np.uint8), 255.0, rng)
    assert noise.std() > 60
