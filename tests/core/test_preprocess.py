"""The one preprocessing definition, checked against hand-computed values."""

import numpy as np
import pytest
from PIL import Image

from mscvision.core.errors import ConfigError, ImageError
from mscvision.core.preprocess import (PreprocessSpec, channel_percentiles, crop_or_pad, percentile_normalize,
                                       preprocess, resize)


def test_resize_upscale_matches_hand_computation():
    # out centres at -0.25, 0.25, 0.75, 1.25 in input pixels; edge weights renormalised
    x = np.array([[0.0, 1.0]], np.float32).reshape(1, 2, 1)
    out = resize(x, (1, 4))[0, :, 0]
    np.testing.assert_allclose(out, [0.0, 0.25, 0.75, 1.0], atol=1e-6)


def test_resize_downscale_by_two_uses_antialiasing_triangle():
    # 4 -> 2: centre 0.5, support 2: weights 0.75, 0.75, 0.25 (renormalised at the edge)
    x = np.array([0.0, 1.0, 2.0, 3.0], np.float32).reshape(1, 4, 1)
    out = resize(x, (1, 2))[0, :, 0]
    np.testing.assert_allclose(out, [(0.75 * 0 + 0.75 * 1 + 0.25 * 2) / 1.75, (0.25 * 1 + 0.75 * 2 + 0.75 * 3) / 1.75],
                               atol=1e-6)


@pytest.mark.parametrize("shape,size", [((37, 53), (16, 16)), ((20, 20), (64, 48)), ((64, 64), (96, 96))])
def test_resize_matches_pillow_bilinear(shape, size):
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    expected = np.asarray(Image.fromarray(x, "F").resize((size[1], size[0]), Image.BILINEAR))
    np.testing.assert_allclose(resize(x[:, :, None], size)[:, :, 0], expected, atol=1e-4)


def test_crop_or_pad_centres_both_ways():
    x = np.arange(12, dtype=np.float32).reshape(3, 4, 1)  # rows of 4
    out = crop_or_pad(x, (5, 2))[:, :, 0]
    expected = np.array([[0, 0], [1, 2], [5, 6], [9, 10], [0, 0]], np.float32)
    np.testing.assert_array_equal(out, expected)


def test_percentile_normalisation_hand_computed():
    # values 0..100: 10th percentile = 10, 90th = 90 -> (v - 10) / 80, clipped
    x = np.arange(101, dtype=np.float32).reshape(101, 1, 1)
    out = percentile_normalize(x, 10, 90)[:, 0, 0]
    assert out[10] == 0.0 and out[90] == 1.0 and out[0] == 0.0 and out[100] == 1.0
    np.testing.assert_allclose(out[50], 0.5)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("as_dtype", [np.float32, np.float64])
def test_channel_percentiles_equal_numpys(dtype, as_dtype):
    # the sort-based percentiles of integer images are np.percentile's numbers, not approximately them:
    # models were calibrated with np.percentile, and the station must scale exactly as training did
    rng = np.random.default_rng(7)
    for _ in range(300):
        n, c = int(rng.integers(1, 2000)), int(rng.integers(1, 4))
        top = int(rng.choice([2, 40, np.iinfo(dtype).max]))
        values = rng.integers(0, top, (n, c), endpoint=True).astype(dtype)
        qs = tuple(float(q) for q in rng.choice([0.0, 0.5, 1.0, 99.0, 99.8, 100.0, rng.uniform(0, 100)], 2))
        expected = np.percentile(values.astype(as_dtype), qs, axis=0)
        np.testing.assert_array_equal(channel_percentiles(values, qs, as_dtype), expected)


def test_percentile_is_per_channel_and_flat_channel_is_zero():
    x = np.stack([np.linspace(0, 1000, 100), np.full(100, 7.0)], axis=1).reshape(10, 10, 2).astype(np.float32)
    out = percentile_normalize(x, 0, 100)
    assert out[..., 0].min() == 0 and out[..., 0].max() == 1
    assert np.all(out[..., 1] == 0)


def test_fixed_range_by_bit_depth():
    spec = PreprocessSpec(intensity="fixed", size=(2, 2))
    eight = np.array([[0, 255], [51, 102]], np.uint8)[:, :, None]
    sixteen = np.array([[0, 65535], [13107, 26214]], np.uint16)[:, :, None]
    np.testing.assert_allclose(preprocess(eight, spec)[0], [[0, 1], [0.2, 0.4]], atol=1e-6)
    np.testing.assert_allclose(preprocess(sixteen, spec)[0], [[0, 1], [0.2, 0.4]], atol=1e-6)


def test_mean_std_and_channel_selection_order():
    spec = PreprocessSpec(in_channels=2, channels=(2, 0), intensity="fixed", size=(1, 1), mean=(0.5, 0.0), std=(0.5, 2.0))
    image = np.array([[[255, 0, 0]]], np.uint8)  # channel 0 full, channel 2 empty
    out = preprocess(image, spec)
    np.testing.assert_allclose(out[:, 0, 0], [(0 - 0.5) / 0.5, (1.0 - 0.0) / 2.0])


def test_pixel_size_rescales_before_fitting():
    spec = PreprocessSpec(intensity="fixed", size=(4, 4), fit="crop_or_pad", pixel_size_um=1.0)
    image = np.full((4, 4, 1), 255, np.uint8)
    out = preprocess(image, spec, pixel_size_um=0.5)  # half-size pixels: 4 px -> 2 px, then padded
    assert out[0].sum() == pytest.approx(4.0)


def test_wrong_channel_count_names_the_source():
    with pytest.raises(ImageError, match="cells.tif: has 5 channel"):
        preprocess(np.zeros((8, 8, 5), np.uint8), PreprocessSpec(in_channels=3), source="cells.tif")


def test_grey_saved_as_rgb_is_accepted_for_one_channel_models():
    rgb = np.repeat(np.arange(64, dtype=np.uint8).reshape(8, 8, 1), 3, axis=2)
    spec = PreprocessSpec(size=(8, 8), intensity="fixed")
    np.testing.assert_array_equal(preprocess(rgb, spec), preprocess(rgb[:, :, :1], spec))


def test_bit_depth_check():
    with pytest.raises(ImageError, match="16-bit"):
        preprocess(np.zeros((4, 4, 1), np.uint16), PreprocessSpec(bit_depth=8, size=(4, 4)))


def test_spec_round_trips_through_json_and_rejects_unknown_keys():
    spec = PreprocessSpec(in_channels=2, channels=(1, 0), size=(64, 64), mean=(0.1, 0.2), std=(1.0, 2.0))
    import json

    assert PreprocessSpec.from_dict(json.loads(spec.to_json())) == spec
    with pytest.raises(ConfigError, match="unknown preprocessing key"):
        PreprocessSpec.from_dict({**spec.to_dict(), "gamma": 2})


def test_percentile_scope_is_validated_naming_the_key():
    # "image" is the only scope: a spec (a config, or a model's metadata) with another one is refused,
    # never silently normalised per array while it asked for something else (e.g. a whole field)
    for bad in ("field", "tile", ""):
        with pytest.raises(ConfigError, match=r"preprocess\.percentile_scope=.*'image'"):
            PreprocessSpec(percentile_scope=bad)
        with pytest.raises(ConfigError, match=r"preprocess\.percentile_scope"):
            PreprocessSpec.from_dict({**PreprocessSpec().to_dict(), "percentile_scope": bad})


def test_percentile_scope_image_measures_the_array_it_is_given():
    # one crop normalised on its own reaches the full [0, 1] range; cut from the normalised whole it does not
    whole = np.arange(400, dtype=np.float32).reshape(20, 20, 1)
    spec = PreprocessSpec(percentile_low=0, percentile_high=100, size=(10, 10), fit="crop_or_pad")
    crop = whole[:10, :10]
    alone = preprocess(crop, spec)[0]
    assert alone.min() == 0.0 and alone.max() == 1.0
    assert preprocess(whole, PreprocessSpec(percentile_low=0, percentile_high=100, size=(20, 20)))[0][:10, :10].max() < 0.5


def test_fixed_intensity_refuses_float_pixels_outside_0_1_by_name():
    # 0..4095 floats would be clipped to an all-white input and still get a label
    image = np.linspace(0, 4095, 64, dtype=np.float32).reshape(8, 8, 1)
    with pytest.raises(ImageError, match=r"cells\.tif: has float pixel values from 0 to 4095.*rescale the image "
                                         r"to 0\.\.1, or train with preprocess\.intensity=percentile"):
        preprocess(image, PreprocessSpec(intensity="fixed", size=(8, 8)), source="cells.tif")
    preprocess(image / 4095, PreprocessSpec(intensity="fixed", size=(8, 8)))  # in range: accepted


def test_fixed_intensity_floor_measures_what_the_model_sees():
    from mscvision.core.preprocess import flat_channels

    # a dark 16-bit frame with 20 levels of noise: raw spread 20, but ~0 of the 0..1 input
    dark = np.random.default_rng(0).integers(100, 121, (32, 32, 1)).astype(np.uint16)
    assert flat_channels(dark, PreprocessSpec(intensity="fixed", size=(32, 32))) == [0]
    assert flat_channels(dark, PreprocessSpec(size=(32, 32))) == []  # percentile mode stretches it: content
    cell = dark.copy()
    cell[8:24, 8:24] += 3000  # a dim object: 4.6% of the range
    assert flat_channels(cell, PreprocessSpec(intensity="fixed", size=(32, 32))) == []


def test_crop_or_pad_floor_measures_the_centre_crop_the_model_sees():
    from mscvision.core.preprocess import flat_channels

    image = np.full((64, 64, 1), 50, np.uint8)
    image[:, :8] = image[:, -8:] = 200  # content only at the edges, cropped away for a 32x32 input
    assert flat_channels(image, PreprocessSpec(size=(32, 32), fit="crop_or_pad")) == [0]
    assert flat_channels(image, PreprocessSpec(size=(32, 32), fit="resize")) == []
    # rescaled to the model's pixel size first: at 0.5 µm/px for a 1 µm/px model, 64 px become 32: all seen
    spec = PreprocessSpec(size=(32, 32), fit="crop_or_pad", pixel_size_um=1.0)
    assert flat_channels(image, spec, pixel_size_um=0.5) == []
