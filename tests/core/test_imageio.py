"""Decoding the formats users bring: 8/16-bit PNG, JPEG, (OME-)TIFF, 1..N channels, both layouts."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from mscvision.core.errors import ImageError
from mscvision.core.imageio import decode_image, write_image


def test_16bit_single_channel_tiff(tmp_path):
    data = (np.arange(64 * 48) * 20).reshape(64, 48).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", data)
    img = decode_image(tmp_path / "a.tif")
    assert img.bit_depth == 16 and img.array.shape == (64, 48, 1)
    np.testing.assert_array_equal(img.array[:, :, 0], data)


@pytest.mark.parametrize("channels", [3, 5])
def test_multichannel_tiff_channels_first_and_last(tmp_path, channels):
    data = np.random.default_rng(0).integers(0, 4000, (channels, 40, 30), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "first.tif", data, photometric="minisblack")
    tifffile.imwrite(tmp_path / "last.tif", np.moveaxis(data, 0, -1), photometric="minisblack", planarconfig="contig")
    for name in ("first.tif", "last.tif"):
        img = decode_image(tmp_path / name)
        assert img.array.shape == (40, 30, channels), name
        np.testing.assert_array_equal(img.array, np.moveaxis(data, 0, -1))


def test_ome_tiff_pixel_size_and_channel_axis(tmp_path):
    data = np.random.default_rng(1).integers(0, 255, (2, 32, 32), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "x.ome.tif", data, ome=True,
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65})
    img = decode_image(tmp_path / "x.ome.tif")
    assert img.array.shape == (32, 32, 2)
    assert img.pixel_size_um == pytest.approx(0.65)


def test_ome_zstack_is_max_projected(tmp_path):
    data = np.zeros((3, 8, 8), np.uint16)
    data[1, 2, 2] = 900
    tifffile.imwrite(tmp_path / "z.ome.tif", data, ome=True, metadata={"axes": "ZYX"})
    img = decode_image(tmp_path / "z.ome.tif")
    assert img.array.shape == (8, 8, 1) and img.array[2, 2, 0] == 900
    assert any("maximum-intensity" in n for n in img.notes)


def test_write_image_ome_round_trip_keeps_pixel_size(tmp_path):
    write_image(tmp_path / "w.tif", np.ones((8, 8, 2), np.uint16), pixel_size_um=0.3)
    assert decode_image(tmp_path / "w.tif").pixel_size_um == pytest.approx(0.3)


def test_rgb_jpeg_and_grey_png(tmp_path):
    Image.fromarray(np.full((16, 16, 3), 120, np.uint8)).save(tmp_path / "c.jpg", quality=95)
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(tmp_path / "g.png")
    assert decode_image(tmp_path / "c.jpg").array.shape == (16, 16, 3)
    g = decode_image(tmp_path / "g.png")
    assert g.array.shape == (16, 16, 1) and g.bit_depth == 8


def test_16bit_png_round_trip(tmp_path):
    data = np.array([[0, 1000], [40000, 65535]], np.uint16)
    write_image(tmp_path / "s.png", data)
    img = decode_image(tmp_path / "s.png")
    assert img.bit_depth == 16
    np.testing.assert_array_equal(img.array[:, :, 0], data)


def test_corrupt_and_fake_files_name_the_file(tmp_path):
    (tmp_path / "notes.png").write_text("this is not an image")
    with pytest.raises(ImageError, match=r"notes\.png: cannot be decoded"):
        decode_image(tmp_path / "notes.png")
    with pytest.raises(ImageError, match=r"missing\.png: no such file"):
        decode_image(tmp_path / "missing.png")


def test_write_image_multichannel_tiff_round_trip_without_pixel_size(tmp_path):
    data = np.random.default_rng(2).integers(0, 60000, (20, 24, 2), dtype=np.uint16)
    write_image(tmp_path / "two.tif", data)
    img = decode_image(tmp_path / "two.tif")
    assert img.array.shape == (20, 24, 2) and img.pixel_size_um is None
    np.testing.assert_array_equal(img.array, data)
