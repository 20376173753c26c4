"""The image checks (issue 16 item 1): each fires on a crafted image and not on normal ones.

Normal images are synthetic MSC crops (``mscvision.synth``); the reference is fitted on 40 of them,
the calibration scores come from 60 others, and a check "fires" when the crafted image scores
beyond every calibration image (the smallest conformal p-value, 1/61). Numpy only.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mscvision.core.conformal import p_value, smallest_p
from mscvision.core.image_checks import (CHECKS, CHECKS_V1, check_reason, fit_reference, full_scale, measure,
                                         measure_image, reference_checks, rule_reasons)
from mscvision.core.image_shifts import fewer_photons, rescale
from mscvision.core.preprocess import PreprocessSpec, to_unit_range
from mscvision.synth.labels import build_donor, plan_labels
from mscvision.synth.render import render_crop

SIZE = 48
SPEC = PreprocessSpec(size=(SIZE, SIZE))


def synth_crops(seed: int, n: int) -> list[np.ndarray]:
    out = []
    for i, (donor, morph, diff) in enumerate(plan_labels(n, seed)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
        out.append(render_crop(rng, build_donor(seed, donor), (morph, diff), SIZE, "phase", 8).image)
    return out


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    radius = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    y = np.pad(x.astype(np.float64), radius, mode="reflect")
    y = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 0, y)
    y = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 1, y)
    return np.clip(np.round(y), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def fitted():
    reference = fit_reference(synth_crops(1, 40), [8])
    calibration = [measure_image(x, SPEC, None, reference) for x in synth_crops(2, 60)]
    scores = {c: np.array([m[c] for m in calibration]) for c in CHECKS}
    normal = synth_crops(3, 20)
    return reference, scores, normal


def _p_values(image: np.ndarray, fitted) -> dict[str, float]:
    reference, scores, _ = fitted
    measured = measure_image(image, SPEC, None, reference)
    return {c: p_value(measured[c], scores[c]) for c in CHECKS}


def _crafted(name: str, x: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    if name == "blurred":  # a 2-px Gaussian blur: defocus
        return gaussian_blur(x, 2.0)
    if name == "saturated":  # over-exposed: twice the light
        return np.clip(x.astype(int) * 2, 0, 255).astype(np.uint8)
    if name == "zero-clipped":  # an offset that clips the darker third to 0
        return np.clip(x.astype(int) - int(np.percentile(x, 30)), 0, 255).astype(np.uint8)
    if name == "blank":  # an empty field: one level and a grey level of noise
        return np.clip(np.median(x) + rng.integers(-1, 2, x.shape), 0, 255).astype(np.uint8)
    if name == "noise":
        return rng.integers(0, 256, x.shape).astype(np.uint8)
    if name == "exposure-shifted":  # half the exposure: percentile scaling hides it from the model's input
        return (x // 2).astype(np.uint8)
    if name == "zoomed":  # objects 2x larger: a pixel size other than trained, not stated in the file
        return rescale(x, 2.0, 255.0)
    if name == "shrunk":  # objects 2x smaller
        return rescale(x, 0.5, 255.0)
    if name == "fewer-photons":  # shot noise of a 10x shorter exposure, brought back to the same brightness
        return fewer_photons(x, 10.0, 255.0, rng)
    raise AssertionError(name)


@pytest.mark.parametrize("name, check", [
    ("blurred", "focus_low"), ("noise", "focus_high"), ("saturated", "saturated"),
    ("zero-clipped", "zero_clipped"), ("blank", "empty"), ("exposure-shifted", "histogram"),
    ("zoomed", "scale_profile"), ("shrunk", "scale_profile"),
    ("fewer-photons", "noise_high"),
])
def test_each_check_fires_on_its_crafted_image(fitted, name, check):
    _, scores, normal = fitted
    p = _p_values(_crafted(name, normal[0]), fitted)
    assert p[check] == pytest.approx(smallest_p(len(scores[check]))), p


def test_exposure_change_is_invisible_in_the_unit_image_but_not_to_the_histogram_check(fitted):
    x = synth_crops(3, 1)[0]
    dim = _crafted("exposure-shifted", x)
    # percentile scaling hands the model nearly the same input: the check must read the raw values
    assert np.abs(to_unit_range(dim, SPEC) - to_unit_range(x, SPEC)).mean() < 0.01
    assert _p_values(dim, fitted)["histogram"] < _p_values(x, fitted)["histogram"]


def test_no_check_fires_on_normal_crops(fitted):
    _, scores, normal = fitted
    p = [_p_values(x, fitted) for x in normal]
    for check in CHECKS:
        values = np.array([q[check] for q in p])
        # exchangeable with the calibration crops: p is uniform, so about 1 in 61 sits at the bottom
        assert np.sum(values <= smallest_p(len(scores[check]))) <= 2, (check, values)
        assert np.median(values) >= 0.25, (check, values)


def test_reference_is_json_and_measures_alike_after_a_round_trip(fitted):
    reference, _, normal = fitted
    again = json.loads(json.dumps(reference))
    unit = to_unit_range(normal[1], SPEC)
    assert measure(normal[1], unit, again) == measure(normal[1], unit, reference)
    assert set(measure(normal[1], unit, reference)) == set(CHECKS)


def test_a_12_bit_camera_saturates_at_4095_not_65535():
    rng = np.random.default_rng(0)
    training = [rng.integers(100, 3000, (32, 32)).astype(np.uint16) for _ in range(4)]
    reference = fit_reference(training, [16])
    assert full_scale(training[0], reference) == 4095.0
    clipped = training[0].copy()
    clipped[:8] = 4095  # a quarter at the 12-bit ceiling
    assert measure(clipped, to_unit_range(clipped, SPEC), reference)["saturated"] == pytest.approx(0.25)


def test_rules_name_another_bit_depth_or_pixel_size():
    reference = fit_reference([np.zeros((16, 16), np.uint8) + 9], [8], pixel_sizes_um=[1.3, None])
    assert rule_reasons(8, 1.3, reference) == [] and rule_reasons(8, None, reference) == []
    assert rule_reasons(8, 1.31, reference) == []  # within 2%: the same pixel size
    [depth] = rule_reasons(16, None, reference)
    assert "16-bit" in depth and "8-bit" in depth
    [size] = rule_reasons(8, 0.65, reference)
    assert "0.65" in size and "1.3" in size
    assert rule_reasons(8, 0.65, reference, rescaled=True) == []  # the station brings it to the trained scale
    unknown = fit_reference([np.zeros((16, 16), np.uint8)], [8])  # training pixel size never stated
    assert rule_reasons(8, 0.65, unknown) == []


def test_measure_refuses_other_channels_than_the_reference(fitted):
    reference, _, normal = fitted
    rgb = np.repeat(normal[0][:, :, None], 3, axis=2)
    with pytest.raises(ValueError, match="channel"):
        measure(rgb, to_unit_range(rgb[:, :, :1], SPEC), reference)


def test_reasons_say_what_was_measured_against_what():
    text = check_reason("focus_low", -np.log(0.003), 0.001, -np.log(0.05))
    assert "focus 0.003 far below" in text and "0.05" in text and "p=0.001" in text
    assert "12.0% of pixels saturated" in check_reason("saturated", 0.12, 0.01, 0.0)
    assert "another scale" in check_reason("scale_profile", 40.0, 0.001, 3.5)
    assert "noise 4.00% of full scale" in check_reason("noise_high", 0.04, 0.001, 0.005)


def test_a_version_1_reference_measures_its_six_checks_as_before(fitted):
    """A model exported before the scale profile and noise checks: its reference (version 1) gets
    the same six scores it was calibrated with, and nothing it has no calibration for."""
    reference, _, normal = fitted
    old = {k: v for k, v in reference.items() if k != "scale_profile"} | {"version": 1}
    unit = to_unit_range(normal[0], SPEC)
    now = measure(normal[0], unit, reference)
    assert reference_checks(old) == CHECKS_V1 and reference_checks(reference) == CHECKS
    assert measure(normal[0], unit, old) == {c: now[c] for c in CHECKS_V1}


def test_the_scale_profile_needs_training_images_of_two_levels_and_a_window_as_large():
    rng = np.random.default_rng(0)
    tiny = fit_reference([rng.integers(0, 255, (3, 3)).astype(np.uint8) for _ in range(3)], [8])
    assert "scale_profile" not in tiny and reference_checks(tiny) == tuple(c for c in CHECKS if c != "scale_profile")
    reference = fit_reference([rng.integers(0, 255, (32, 32)).astype(np.uint8) for _ in range(5)], [8])
    assert reference["scale_profile"]["levels"] == 3 and len(reference["scale_profile"]["mean"][0]) == 11
    small = rng.integers(0, 255, (4, 4)).astype(np.uint8)  # 3 levels need 8 px: not measured, never "normal"
    scores = measure(small, to_unit_range(small, SPEC), reference)
    assert np.isnan(scores["scale_profile"]) and np.isfinite(scores["noise_high"])
    constant = np.full((32, 32), 40, np.uint8)  # no structure at all: finite, far from any training image
    scores = measure(constant, to_unit_range(constant, SPEC), reference)
    assert np.isfinite(scores["scale_profile"]) and scores["noise_high"] == 0.0


def test_noise_high_is_the_finest_scales_noise_sigma_as_a_share_of_full_scale():
    rng = np.random.default_rng(1)
    reference = fit_reference([np.full((64, 64), 100, np.uint8)], [8])
    noisy = np.clip(np.round(100 + rng.normal(0, 10, (256, 256))), 0, 255).astype(np.uint8)
    sigma = measure(noisy, to_unit_range(noisy, SPEC), reference)["noise_high"] * 255
    assert sigma == pytest.approx(10, rel=0.05)


def test_value_shares_leave_nan_out_of_every_share_but_count_it_in_the_whole():
    # the shares as counting levels gave them (NaN is neither saturated nor clipped), from sorted values
    from mscvision.core.image_checks import _Values

    values = _Values(np.sort(np.array([0.2, np.nan, 1.0, 0.0, np.nan, 0.5])))
    assert values.share_at_least(1.0) == pytest.approx(1 / 6)
    assert values.share_at_most(0.0) == pytest.approx(1 / 6)
    assert values.share_at_least(0.0) == pytest.approx(4 / 6)


def test_measuring_several_images_at_once_gives_each_its_own_scores(fitted):
    """qc measures 16 tiles at a time (measure_many, the Haar pyramid as one array): each image's
    scores must equal measuring it alone, whatever the others are (blurred, noisy, another size)."""
    from mscvision.core.image_checks import measure_many

    reference, _, normal = fitted
    images = [normal[0], _crafted("blurred", normal[1]), _crafted("noise", normal[2]), normal[3][:40, :52]]
    units = [to_unit_range(x, SPEC) for x in images]
    alone = [measure(x, u, reference) for x, u in zip(images, units)]
    assert measure_many(images, units, reference) == alone
    assert measure_many(images[::-1], units[::-1], reference) == alone[::-1]
    assert alone[1]["focus_low"] > alone[0]["focus_low"]  # the blurred one is told apart inside the batch


@pytest.mark.parametrize("side", [64, 512])
def test_the_haar_sums_are_the_float64_ones_on_a_full_window_of_bright_16_bit_values(side: int):
    """The scale profile's energies and |detail| sums in float32 must stay close to float64's on the
    largest window measured (512 px) of bright 16-bit values, where float32 running sums drift most."""
    from mscvision.core.image_checks import _haar_statistics_many

    rng = np.random.default_rng(side)
    u = rng.poisson(30000, (side, side)).astype(np.float32)
    sums, _ = _haar_statistics_many(u[None], 3)
    exact, x = [], u.astype(np.float64)
    for level in range(3):
        a, b, c, d = x[0::2, 0::2], x[0::2, 1::2], x[1::2, 0::2], x[1::2, 1::2]
        details = [a - b + c - d, a + b - c - d, a - b - c + d]  # the code's h, v, d: twice the orthonormal ones
        count = 4.0 * details[0].size * 16.0 ** level
        exact.append([*(float((t * t).sum()) / count for t in details),
                      sum(float(np.abs(t).sum()) for t in details) / (1.5 * count / 4.0 ** level)])
        x = a + b + c + d
    np.testing.assert_allclose(sums[0], np.array(exact), rtol=1e-5)  # einsum's float32 sums: 6e-5 off at 512 px
