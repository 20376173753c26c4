"""Issue 13, the input side: hostile and careless image files never reach the model as a confident label.

Station-side (numpy, Pillow, tifffile, onnxruntime, pytest; no torch). Each test names the item it closes.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import REPO, draw_shape, make_shapes_dataset
from mscvision.core.errors import ImageError
from mscvision.core.imageio import decode_image, write_image
from mscvision.core.preprocess import PreprocessSpec, preprocess
from mscvision.runtime.inputs import collect_inputs, load_input
from mscvision.runtime.model import read_metadata
from runtime_fixtures import png_declaring

FIXTURE = REPO / "models" / "fixtures" / "shapes-tiny.onnx"  # 1 channel, 32x32 input, at most 64 px a side


@pytest.fixture(scope="module")
def metadata():
    return read_metadata(FIXTURE)


def _with_pixel_size(metadata, um: float):
    """The fixture's metadata, as if it had been trained at ``um`` µm per pixel."""
    return dataclasses.replace(metadata, spec=dataclasses.replace(metadata.spec, pixel_size_um=um))


def _shape_image(size: int = 32, seed: int = 0) -> np.ndarray:
    return (draw_shape(np.random.default_rng(seed), size, "disc", 1) * 255).astype(np.uint8)


# --- ImageError carries path and reason (issue 13 item 1; issue 14 item 6) ---------------------------

def test_image_error_carries_path_and_reason_apart(tmp_path):
    with pytest.raises(ImageError) as info:
        decode_image(tmp_path / "gone.png")
    exc = info.value
    assert exc.path == str(tmp_path / "gone.png")
    assert exc.reason.startswith("no such file") and str(exc) == f"{exc.path}: {exc.reason}"
    again = pickle.loads(pickle.dumps(exc))  # crosses process boundaries (loader workers) intact
    assert (again.path, again.reason, str(again)) == (exc.path, exc.reason, str(exc))


def test_a_device_or_pipe_is_refused_without_being_read(tmp_path, metadata):
    os.mkfifo(tmp_path / "pipe.png")  # opening a FIFO for reading would block until a writer comes
    for path in (tmp_path / "pipe.png", Path("/dev/zero")):
        with pytest.raises(ImageError, match="not a regular file"):
            load_input(path, metadata)


# --- item 1: non-finite, degenerate input ------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_tiff_with_non_finite_pixels_is_refused(tmp_path, metadata, bad):
    a = np.ones((32, 32), np.float32)
    a[0, 0] = bad
    tifffile.imwrite(tmp_path / "nan.tif", a)
    with pytest.raises(ImageError, match="non-finite pixel values") as info:
        load_input(tmp_path / "nan.tif", metadata)
    assert ("NaN" if np.isnan(bad) else "infinite") in info.value.reason


@pytest.mark.parametrize("side", [1, 4, 7])
def test_images_below_the_minimum_side_are_refused(tmp_path, metadata, side):
    write_image(tmp_path / "tiny.png", np.full((side, side), 90, np.uint8))
    with pytest.raises(ImageError, match="too small"):
        load_input(tmp_path / "tiny.png", metadata)


def test_minimum_side_scales_with_the_model_input(tmp_path, metadata):
    from mscvision.runtime.inputs import prepare_input

    write_image(tmp_path / "ok8.png", _shape_image(8))
    assert prepare_input(tmp_path / "ok8.png", metadata).tensor.shape == (1, 32, 32)  # 32/8 = 4 < 8: 8 px is enough
    wide = dataclasses.replace(metadata, spec=dataclasses.replace(metadata.spec, size=(160, 160)),
                               max_input_side=320)
    with pytest.raises(ImageError, match="at least 20x20 px"):  # 160 / 8: nothing magnified more than 8x
        prepare_input(tmp_path / "ok8.png", wide)


def test_blank_and_near_constant_frames_are_doubted_not_labelled(tmp_path, metadata):
    from mscvision.runtime.inputs import prepare_input

    write_image(tmp_path / "blank.png", np.full((32, 32), 128, np.uint8))
    hot = np.full((32, 32), 100, np.uint16)
    hot[0, :2] = 60000  # two hot pixels on an otherwise blank frame are not content
    write_image(tmp_path / "hot.tif", hot)
    noise = 100 + np.random.default_rng(0).integers(0, 2, (32, 32)).astype(np.uint16)  # +-1 grey level
    write_image(tmp_path / "quant.tif", noise)
    tifffile.imwrite(tmp_path / "flat.tif", np.full((32, 32), 0.25, np.float32))
    for name in ("blank.png", "hot.tif", "quant.tif", "flat.tif"):
        prepared = prepare_input(tmp_path / name, metadata)
        assert prepared.doubts and "constant" in prepared.doubts[0], name
        assert np.isfinite(prepared.tensor).all()


def test_real_low_contrast_images_are_not_doubted(tmp_path, metadata):
    """The floor must not fire on the fixture's images, at 8 or 16 bits, nor on a dim 16-bit one."""
    from mscvision.runtime.inputs import prepare_input

    for bit_depth in (8, 16):
        make_shapes_dataset(tmp_path / str(bit_depth), n=24, bit_depth=bit_depth)
        for path in sorted((tmp_path / str(bit_depth) / "images").glob("*.png")):
            assert prepare_input(path, metadata).doubts == (), path
    dim = (1000 + draw_shape(np.random.default_rng(3), 32, "bar", 1) * 30).astype(np.uint16)  # 30 counts of signal
    write_image(tmp_path / "dim.tif", dim)
    assert prepare_input(tmp_path / "dim.tif", metadata).doubts == ()


@pytest.mark.parametrize("stated,why", [(0.0, "pixel size of 0"), (-0.5, "pixel size of -0.5"),
                                        (1e-4, "outside the plausible"), (500.0, "outside the plausible")])
def test_implausible_pixel_size_from_metadata_is_refused_not_obeyed(tmp_path, metadata, stated, why):
    tifffile.imwrite(tmp_path / "p.ome.tif", _shape_image(), ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": stated, "PhysicalSizeY": stated})
    with pytest.raises(ImageError, match=why):
        load_input(tmp_path / "p.ome.tif", _with_pixel_size(metadata, 0.5))
    # a model that does not rescale never reads it, so the same file is usable there
    assert load_input(tmp_path / "p.ome.tif", metadata).shape == (1, 32, 32)


def test_72_dpi_writer_default_is_not_taken_for_a_pixel_size(tmp_path, metadata):
    tifffile.imwrite(tmp_path / "dpi.tif", _shape_image(), resolution=(72, 72), resolutionunit="INCH")
    assert decode_image(tmp_path / "dpi.tif").pixel_size_um == pytest.approx(25400 / 72)
    with pytest.raises(ImageError, match="outside the plausible"):
        load_input(tmp_path / "dpi.tif", _with_pixel_size(metadata, 0.5))


def test_unreadable_pixel_size_is_refused_by_a_rescaling_model(tmp_path, metadata):
    tifffile.imwrite(tmp_path / "u.ome.tif", _shape_image(), ome=True, metadata={"axes": "YX"})
    with tifffile.TiffFile(tmp_path / "u.ome.tif") as tif:
        xml = tif.ome_metadata
    tifffile.imwrite(tmp_path / "bad.tif", _shape_image(), description=xml.replace("<Pixels ", '<Pixels PhysicalSizeX="." '))
    with pytest.raises(ImageError, match="pixel size of nan"):
        load_input(tmp_path / "bad.tif", _with_pixel_size(metadata, 0.5))
    with pytest.raises(ImageError, match="pixel size of nan"):
        preprocess(np.zeros((32, 32, 1), np.uint8), PreprocessSpec(size=(32, 32), pixel_size_um=0.5),
                   pixel_size_um=float("nan"), source="x")


def test_pixel_size_that_would_shrink_below_the_minimum_is_refused(tmp_path, metadata):
    tifffile.imwrite(tmp_path / "s.ome.tif", _shape_image(), ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1})
    with pytest.raises(ImageError, match=r"4x4 px once rescaled from 0.1 .* too small"):
        load_input(tmp_path / "s.ome.tif", _with_pixel_size(metadata, 0.8))  # 32 px x 0.125 = 4 px


# --- item 8: too-large message shows the rescaled size; notes; content sniffing ----------------------

def test_too_large_message_shows_the_rescaled_size(tmp_path, metadata):
    tifffile.imwrite(tmp_path / "r.ome.tif", _shape_image(48), ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 1.0, "PhysicalSizeY": 1.0})
    with pytest.raises(ImageError, match=r"48x48 px \(96x96 px once rescaled from 1 to the model's 0.5"):
        load_input(tmp_path / "r.ome.tif", _with_pixel_size(metadata, 0.5))


def test_rescaling_is_reported_in_the_notes(tmp_path, metadata):
    from mscvision.runtime.inputs import prepare_input

    tifffile.imwrite(tmp_path / "r.ome.tif", _shape_image(40), ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.4, "PhysicalSizeY": 0.4})
    prepared = prepare_input(tmp_path / "r.ome.tif", _with_pixel_size(metadata, 0.5))
    assert any("rescaled from 0.4 to 0.5 µm/px (40x40 → 32x32 px)" in n for n in prepared.notes)


def test_png_named_tif_and_tiff_named_png_decode_by_content(tmp_path, metadata):
    from mscvision.runtime.inputs import prepare_input

    grey = _shape_image()
    Image.fromarray(grey).save(tmp_path / "real-png.tif", format="PNG")
    two = np.random.default_rng(0).integers(0, 4000, (2, 20, 24), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "real-tiff.png", two, photometric="minisblack")
    png = decode_image(tmp_path / "real-png.tif")
    np.testing.assert_array_equal(png.array[:, :, 0], grey)
    assert any("decoded as PNG by its content despite the .tif name" in n for n in png.notes)
    tif = decode_image(tmp_path / "real-tiff.png")
    np.testing.assert_array_equal(tif.array, np.moveaxis(two, 0, -1))
    assert any("decoded as TIFF" in n for n in tif.notes)
    assert any("decoded as PNG" in n for n in prepare_input(tmp_path / "real-png.tif", metadata).notes)


def test_multi_picture_jpeg_is_a_jpeg(tmp_path):
    grey = Image.fromarray(_shape_image()).convert("RGB")
    grey.save(tmp_path / "camera.jpg", format="MPO", save_all=True, append_images=[grey])
    decoded = decode_image(tmp_path / "camera.jpg")
    assert decoded.array.shape == (32, 32, 3) and not any("decoded as" in n for n in decoded.notes)


def test_decode_notes_flow_out_of_prepare_input(tmp_path, metadata):
    from mscvision.runtime.inputs import prepare_input

    grey = _shape_image()
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 200)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert any("dropped alpha of RGBA" in n for n in prepare_input(tmp_path / "a.png", metadata).notes)
    stack = np.stack([grey, grey // 2, grey // 3])
    tifffile.imwrite(tmp_path / "z.ome.tif", stack, ome=True, metadata={"axes": "ZYX"})
    assert any("maximum-intensity" in n for n in prepare_input(tmp_path / "z.ome.tif", metadata).notes)
    tifffile.imwrite(tmp_path / "q.tif", np.stack([grey, grey]))  # two bare pages: read as channels
    assert any("read as channels" in n for n in decode_image(tmp_path / "q.tif").notes)


# --- item 7: memory bounded before decoding ----------------------------------------------------------

@pytest.fixture(scope="module")
def declared_giant(tmp_path_factory) -> Path:
    """A zlib TIFF of 20480 x 20480 zeros: 400 MiB decoded, under 1 MiB on disk."""
    path = tmp_path_factory.mktemp("giant") / "giant.tif"
    tile = np.zeros((2048, 2048), np.uint8)
    tifffile.imwrite(path, (tile for _ in range(100)), shape=(20480, 20480), dtype="uint8", tile=(2048, 2048),
                     compression="zlib")
    assert path.stat().st_size < 2**21
    return path


def test_declared_giant_tiff_is_refused_from_its_header(declared_giant, metadata, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", never)
    monkeypatch.setattr(tifffile.TiffFile, "asarray", never)
    with pytest.raises(ImageError, match=r"declares 20480x20480 px .* it was not decoded"):
        decode_image(declared_giant)
    with pytest.raises(ImageError, match="not decoded|much larger"):
        load_input(declared_giant, metadata)


def test_declared_giant_tiff_costs_no_memory(declared_giant):
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match="declares"):
            decode_image(declared_giant)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20  # the decoded image would be 400 MiB


def test_declared_giant_png_is_refused_from_its_header(tmp_path):
    png_declaring(tmp_path / "big.png", 9000, 9000)  # 81 MP: above the cap, below Pillow's own guard
    with pytest.raises(ImageError, match=r"declares 9000x9000 px .* it was not decoded"):
        decode_image(tmp_path / "big.png")
    png_declaring(tmp_path / "bomb.png", 20000, 20000)  # Pillow's guard answers first: still a clear refusal
    with pytest.raises(ImageError, match="decompression-bomb guard|declares"):
        decode_image(tmp_path / "bomb.png", max_pixels=10**9)


def test_pixel_cap_is_configurable(tmp_path):
    write_image(tmp_path / "a.png", _shape_image(100))
    assert decode_image(tmp_path / "a.png").array.shape == (100, 100, 1)
    with pytest.raises(ImageError, match="more than the 5,000 this station decodes"):
        decode_image(tmp_path / "a.png", max_pixels=5000)


def test_decode_budget_holds_in_total_across_threads():
    from mscvision.runtime.inputs import DecodeBudget

    budget = DecodeBudget(100)
    entered, go = [], threading.Event()

    def worker():
        with budget.reserve(40):
            entered.append(1)
            go.wait(10)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for _ in range(200):  # wait (bounded) for the two that fit
        if len(entered) >= 2:
            break
        time.sleep(0.01)
    time.sleep(0.05)
    assert len(entered) == 2 and budget.in_use == 80  # the third waits: 120 would exceed 100
    go.set()
    for t in threads:
        t.join(10)
    assert len(entered) == 3 and budget.in_use == 0 and budget.peak == 80
    with pytest.raises(ValueError, match="exceed the whole decode budget"):
        with budget.reserve(101):  # could never be granted: refused at once, not a deadlock
            pass


def test_prepare_input_shares_one_budget_between_workers(tmp_path, metadata):
    from concurrent.futures import ThreadPoolExecutor

    from mscvision.runtime.inputs import DecodeBudget, prepare_input, working_bytes
    from mscvision.core.imageio import open_image

    paths = []
    for i in range(12):
        write_image(tmp_path / f"{i}.png", _shape_image(seed=i))
        paths.append(tmp_path / f"{i}.png")
    with open_image(paths[0]) as reader:
        one = working_bytes(reader.header)
    budget = DecodeBudget(2 * one)  # room for two images at once, with four workers
    with ThreadPoolExecutor(4) as pool:
        prepared = list(pool.map(lambda p: prepare_input(p, metadata, budget), paths))
    assert len(prepared) == 12 and budget.in_use == 0 and 0 < budget.peak <= 2 * one
    alone = [load_input(p, metadata) for p in paths]
    assert all(np.array_equal(a, p.tensor) for a, p in zip(alone, prepared))
    with pytest.raises(ImageError, match="more than the whole decode budget"):
        prepare_input(paths[0], metadata, DecodeBudget(one - 1))


# --- item 2 and 8: collecting inputs -----------------------------------------------------------------

@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    for name in ("a.png", "b.png", "sub/c.png"):
        write_image(root / name, _shape_image())
    return root


def test_non_utf8_file_name_is_an_error_row_with_a_printable_path(folder):
    write_image(folder / "x.png", _shape_image())
    os.rename(os.fsencode(folder / "x.png"), os.fsencode(folder) + b"/caf\xe9.png")
    got = collect_inputs([str(folder)])
    assert [Path(p).name for p in got.paths] == ["a.png", "b.png"]
    [(path, reason)] = got.problems
    assert path.endswith("caf\\xe9.png") and "not valid UTF-8" in reason
    path.encode("utf-8")  # printable: no lone surrogates left


def test_unlistable_folder_is_a_problem_not_a_traceback(folder, monkeypatch):
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("sub"):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    got = collect_inputs([str(folder)], recursive=True)
    assert [Path(p).name for p in got.paths] == ["a.png", "b.png"]
    [(path, reason)] = got.problems
    assert path == str(folder / "sub") and "cannot be listed" in reason and "Permission denied" in reason


def test_link_loop_terminates_and_is_reported(folder):
    (folder / "sub" / "back").symlink_to(folder, target_is_directory=True)
    (folder / "again").symlink_to(folder / "sub", target_is_directory=True)  # a second way into sub
    got = collect_inputs([str(folder)], recursive=True)
    names = sorted(Path(p).name for p in got.paths)
    assert names == ["a.png", "b.png", "c.png"]  # sub's image once, though two ways lead there
    assert any("link loop" in reason and path.endswith("back") for path, reason in got.problems)
    assert got.ignored.get("links to folders already searched") == 1


def test_broken_links_globs_matching_nothing_and_appledouble_are_accounted_for(folder):
    (folder / "gone.png").symlink_to(folder / "nowhere.png")
    (folder / "._a.png").write_bytes(b"\0\5\26\7AppleDouble")
    (folder / "._b.png").write_bytes(b"\0\5\26\7AppleDouble")
    got = collect_inputs([str(folder), str(folder / "*.jpg"), str(folder / "._*.png"), str(folder / "missing.png")])
    assert [Path(p).name for p in got.paths] == ["a.png", "b.png", "missing.png"]  # a missing name → "no such file" row
    reasons = dict(got.problems)
    assert "broken symbolic link" in reasons[str(folder / "gone.png")]
    assert "no file matches" in reasons[str(folder / "*.jpg")]
    assert got.ignored == {"AppleDouble ._* files (macOS metadata, not images)": 4}  # 2 in the folder, 2 by the glob


def test_collected_inputs_keep_order_and_drop_repeats(folder):
    got = collect_inputs([str(folder / "b.png"), str(folder), str(folder / "*.png")])
    assert [Path(p).name for p in got.paths] == ["b.png", "a.png"]
    assert got.problems == [] and got.ignored == {}


def test_a_tree_deeper_than_the_recursion_limit_is_searched(tmp_path):
    """With the limit lowered for the test, so the tree stays shallow enough for pytest's own
    (recursive) clean-up of tmp_path."""
    import sys

    path = str(tmp_path / "t")
    os.mkdir(path)
    for _ in range(400):
        path = os.path.join(path, "d")
        os.mkdir(path)
    leaf = os.path.join(path, "leaf.png")
    write_image(leaf, _shape_image())
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(300)  # the test's own stack is well under 100 frames
    try:
        got = collect_inputs([str(tmp_path / "t")], recursive=True)
    finally:
        sys.setrecursionlimit(limit)
    assert got.paths == [leaf] and got.problems == []


def test_a_float64_image_at_a_raised_pixel_cap_fits_the_decode_budget():
    from mscvision.core.imageio import ImageHeader
    from mscvision.runtime.inputs import decode_budget, working_bytes

    cap = 400_000_000  # raised well past the default budget's reach
    header = ImageHeader("TIFF", 20_000, 20_000, cap, 8, None)  # float64, exactly at the cap
    assert working_bytes(header) <= decode_budget(cap).max_bytes  # used to be 4 bytes a value short


def test_crop_or_pad_refuses_an_input_that_would_be_mostly_padding(metadata, tmp_path):
    from mscvision.runtime.inputs import prepare_input

    spec = dataclasses.replace(metadata.spec, fit="crop_or_pad")  # a 32x32 input
    padded = dataclasses.replace(metadata, spec=spec)
    small, enough = tmp_path / "small.png", tmp_path / "enough.png"
    _png_write(small, _shape_image(20))  # 400 of 1,024 px: 61% padding
    _png_write(enough, _shape_image(24))  # 576 of 1,024: 44% padding
    with pytest.raises(ImageError, match=r"small\.png: 20x20 px would fill only 39% of this model's 32x32 input"
                                         r".*at most half of the input may be padding"):
        prepare_input(small, padded)
    assert prepare_input(enough, padded).tensor.shape == (1, 32, 32)
    assert prepare_input(small, metadata).tensor.shape == (1, 32, 32)  # fit=resize: stretched, no padding


def test_a_blank_centre_crop_is_reviewed_though_its_edges_have_content(metadata, tmp_path):
    from mscvision.runtime.inputs import prepare_input

    image = np.full((64, 64), 50, np.uint8)
    image[:, :8] = image[:, -8:] = 200  # what crop_or_pad cuts away for a 32x32 input
    _png_write(tmp_path / "edges.png", image)
    cropping = dataclasses.replace(metadata, spec=dataclasses.replace(metadata.spec, fit="crop_or_pad"))
    assert any("constant or nearly so (between the 1 and 99 percentiles in the centre crop" in d
               for d in prepare_input(tmp_path / "edges.png", cropping).doubts)
    assert prepare_input(tmp_path / "edges.png", metadata).doubts == ()  # resized: the edges are seen


def _png_write(path, array):
    Image.fromarray(array).save(path)
