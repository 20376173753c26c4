"""Whole fields, streamed: band reads equal the whole decode, a field larger than a memory limit is
scanned inside it, broken files keep what was read, and each field's tiles go through predict's code."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile

from mscvision.core.errors import ImageError
from mscvision.core.fieldio import open_field
from mscvision.core.imageio import decode_image, write_tiled_tiff
from mscvision.runtime.qc import scan_counts
from mscvision.runtime.tiles import scan_field, tile_side
from mscvision.synth.shapes import draw_shape

from runtime_fixtures import model  # noqa: F401 (pytest fixture)

TILE = 32  # the fixture model's input side (it records no training_image_side and no pixel size)


def shapes_field(rows: int, cols: int, shape: str = "disc", seed: int = 0, blank_rows: int = 0) -> np.ndarray:
    """A uint16 field of ``rows`` x ``cols`` fixture-sized crops (one shape each), then ``blank_rows``
    rows of camera noise only."""
    rng = np.random.default_rng(seed)
    crops = [[draw_shape(rng, TILE, shape, 1) for _ in range(cols)] for _ in range(rows)]
    field = np.block(crops) if rows else np.zeros((0, cols * TILE), np.float32)
    blank = rng.normal(0.2, 0.003, (blank_rows * TILE, cols * TILE)).astype(np.float32)
    return (np.clip(np.vstack([field, blank]), 0, 1) * 60000).astype(np.uint16)


@pytest.mark.parametrize("layout", ["tiled-zlib", "strips-zlib", "contiguous", "tiled-lzw", "strips-lzw",
                                    "tiled-zstd"])
def test_bands_equal_the_whole_decode(tmp_path: Path, layout: str) -> None:
    # LZW and zstd (microscope and Fiji exports) need imagecodecs, a station dependency: without it
    # tifffile can neither read nor write them
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 65535, (300, 217), dtype=np.uint16)
    path = tmp_path / "f.tif"
    if layout == "tiled-zlib":
        write_tiled_tiff(path, arr, 0.65, tile=64)
    elif layout == "strips-zlib":
        tifffile.imwrite(path, arr, compression="zlib", rowsperstrip=37)
    elif layout.startswith("tiled-"):
        tifffile.imwrite(path, arr, compression=layout.split("-")[1], tile=(64, 64))
    elif layout.startswith("strips-"):
        tifffile.imwrite(path, arr, compression=layout.split("-")[1], rowsperstrip=37)
    else:
        tifffile.imwrite(path, arr)
    whole = decode_image(path).array
    with open_field(path) as field:
        assert (field.height, field.width, field.channels, field.bit_depth) == (300, 217, 1, 16)
        assert (field.memmaps is not None) == (layout == "contiguous")
        for y0, y1 in [(0, 32), (32, 64), (50, 190), (268, 300), (0, 300)]:
            np.testing.assert_array_equal(field.read_band(y0, y1), whole[y0:y1])
    if layout == "tiled-zlib":
        with open_field(path) as field:
            assert field.pixel_size_um == pytest.approx(0.65)


def test_a_field_larger_than_the_memory_limit_is_scanned_within_it(tmp_path: Path, model) -> None:
    """3008 x 3008 uint16 = 17 MiB decoded (69 MiB as float32); the scan may allocate at most 12 MiB
    at once: the thumbnail (2 MiB), two rows of decoded TIFF tiles (3 MiB) and the 8,836 tile results
    kept for the report (about 3 MiB) included."""
    arr = shapes_field(4, 94, blank_rows=90)  # 3008 px a side: tissue on top, blank below
    path = tmp_path / "big.tif"
    write_tiled_tiff(path, arr, None, tile=256)
    del arr
    limit = 12 * 2**20
    tracemalloc.start()
    try:
        scan = scan_field(model, str(path), batch_size=16, min_foreground=0.02)  # one small disc per tile
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert scan.error == "" and len(scan.tiles) == 94 * 94
    assert peak < limit, f"peak {peak / 2**20:.1f} MiB traced while scanning"
    counts = scan_counts(scan)
    assert counts["background"] >= 90 * 94 - 10 and counts["evaluated"] >= 4 * 94 - 10
    # the limit is one a whole decode could not meet: the check above would catch a non-streaming reader
    tracemalloc.start()
    try:
        decode_image(path, max_pixels=2**30)
        _, whole_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert whole_peak > limit


def test_tiles_get_the_same_results_as_the_same_crops_through_predict(tmp_path: Path, model) -> None:
    from mscvision.runtime.predict import predict_files

    arr = shapes_field(2, 3, shape="bar", seed=3)
    path = tmp_path / "f.tif"
    write_tiled_tiff(path, arr, None, tile=32)
    crops = []
    for r in range(2):
        for c in range(3):
            crop = tmp_path / f"crop_{r}_{c}.tif"
            tifffile.imwrite(crop, arr[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE])
            crops.append(str(crop))
    scan = scan_field(model, str(path), min_foreground=0.0)  # thin bars: every tile evaluated
    rows = list(predict_files(model, crops))
    assert [t.status for t in scan.tiles] == [r["status"] for r in rows]
    for t, row in zip(scan.tiles, rows):
        for task in model.metadata.tasks:
            expected = [row[f"{task.name}.p.{k}"] for k in task.classes]
            np.testing.assert_allclose(t.probabilities[task.name], expected, atol=1e-6)
            assert t.labels[task.name] == row[f"{task.name}.label"]


def test_a_truncated_tiff_keeps_the_tiles_read_before_the_break(tmp_path: Path, model) -> None:
    path = tmp_path / "cut.tif"
    write_tiled_tiff(path, shapes_field(8, 8), None, tile=64)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * 0.6)])
    scan = scan_field(model, str(path))
    assert "truncated or corrupt" in scan.error or "truncated" in scan.error, scan.error
    assert 0 < len(scan.tiles) < 64  # the rows before the cut are kept; the rest are not invented


def test_a_file_that_is_not_an_image_and_a_missing_file_are_errors_not_exceptions(tmp_path: Path, model) -> None:
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not a tiff at all" * 10)
    assert scan_field(model, str(junk)).error
    assert "no such file" in scan_field(model, str(tmp_path / "gone.tif")).error


def test_a_field_smaller_than_one_tile_is_an_error_naming_the_fix(tmp_path: Path, model) -> None:
    path = tmp_path / "small.tif"
    tifffile.imwrite(path, np.zeros((20, 20), np.uint16))
    scan = scan_field(model, str(path))
    assert "shorter than one" in scan.error and "mscvision predict" in scan.error


def test_unknown_scale_is_doubted_only_when_the_model_has_a_pixel_size(tmp_path: Path, model) -> None:
    from dataclasses import replace

    path = tmp_path / "f.tif"
    write_tiled_tiff(path, shapes_field(2, 2), None, tile=32)
    assert scan_field(model, str(path)).doubts == []  # the fixture model states no pixel size
    scaled = replace(model.metadata, spec=replace(model.metadata.spec, pixel_size_um=1.3))
    twin = replace(model, metadata=scaled)
    doubted = scan_field(twin, str(path))
    assert doubted.doubts and "no pixel size" in doubted.doubts[0]
    declared = scan_field(twin, str(path), declared_pixel_size_um=0.65)
    assert declared.doubts == [] and declared.tile_px == 64  # 32 px at 1.3 µm = 64 px at 0.65 µm


def test_tile_side_follows_the_file_pixel_size(model) -> None:
    from dataclasses import replace

    scaled = replace(model.metadata, spec=replace(model.metadata.spec, pixel_size_um=1.3),
                     raw={**model.metadata.raw, "input": {**model.metadata.raw["input"], "training_image_side": 40}})
    assert tile_side(scaled, 1.3) == 40 and tile_side(scaled, 0.65) == 80 and tile_side(scaled, None) == 40
    assert tile_side(model.metadata, None) == 32


def test_the_thumbnail_is_small_and_at_the_stated_scale(tmp_path: Path, model) -> None:
    path = tmp_path / "f.tif"
    write_tiled_tiff(path, shapes_field(2, 3), None, tile=32)
    scan = scan_field(model, str(path))
    assert scan.thumbnail.dtype == np.uint8 and scan.thumbnail.shape == (64, 96) and scan.scale == 1.0
    assert scan.thumbnail.max() >= 250 and scan.thumbnail.min() <= 5


def test_open_field_names_a_stack(tmp_path: Path) -> None:
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((3, 64, 64), np.uint16), photometric="minisblack", metadata={"axes": "ZYX"})
    with pytest.raises(ImageError, match="planes"):
        with open_field(path):
            pass


def test_the_scan_leaves_the_garbage_collector_as_it_found_it(tmp_path: Path, model) -> None:
    import gc

    path = tmp_path / "f.tif"
    write_tiled_tiff(path, shapes_field(2, 2), None, tile=64)
    assert gc.isenabled()
    assert scan_field(model, str(path)).error == ""
    assert gc.isenabled()  # paused for the scan only
    gc.disable()
    try:
        scan_field(model, str(path / "missing.tif"))  # a failed scan restores it too
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_failed_batch_leaves_nothing_for_the_paused_collector(model) -> None:
    """qc pauses the cyclic collector for a field: a batch whose session run fails must not keep its
    tensors alive through an exception-traceback cycle (a session failing every batch, e.g. out of
    memory, would otherwise hold every batch until the field ends)."""
    import gc
    import weakref

    from mscvision.runtime.inputs import PreparedInput
    from mscvision.runtime.predict import batch_outputs, rows_from_outputs

    seen = []

    class FailingSession:
        metadata = model.metadata

        def predict(self, batch):
            seen.append(weakref.ref(batch))
            raise MemoryError("out of memory")

    side = model.metadata.spec.size
    loaded = [(PreparedInput(np.zeros((1, *side), np.float32)), "") for _ in range(4)]
    gc.disable()
    try:
        outputs = batch_outputs(FailingSession(), loaded, None)
        rows = rows_from_outputs(FailingSession(), [f"t{i}" for i in range(4)], loaded, None, outputs)
        del outputs
        assert seen and seen[0]() is None, "the failed batch is still held: only the cyclic collector frees it"
    finally:
        gc.enable()
    assert [r["status"] for r in rows] == ["error"] * 4
    assert "MemoryError: out of memory" in rows[0]["reason"]


def test_a_batch_is_a_view_of_its_row_of_inputs_or_the_rows_joined(model) -> None:
    """qc writes each tile row's model inputs into one array (its batches are not stacked on the
    session's thread); a batch within one row is a view of it, one across rows joins the runs in order,
    and tiles that could not be prepared (no slot) are left out, as predict leaves them out."""
    from mscvision.runtime.tiles import _stacked

    first, second = np.arange(4 * 3.0).reshape(4, 3), np.arange(100, 109.0).reshape(3, 3)
    within = _stacked([(first, 1), None, (first, 2), (first, 3)])
    assert np.shares_memory(within, first) and within.tolist() == first[1:4].tolist()
    across = _stacked([(first, 2), (first, 3), None, (second, 0), (second, 1)])
    assert across.tolist() == [*first[2:4].tolist(), *second[0:2].tolist()]
    assert _stacked([None, None]) is None


def test_a_batch_given_the_wrong_number_of_stacked_inputs_is_an_error_not_a_shifted_result(model) -> None:
    from mscvision.runtime.inputs import PreparedInput
    from mscvision.runtime.predict import batch_outputs

    side = model.metadata.spec.size
    loaded = [(PreparedInput(np.zeros((1, *side), np.float32)), "") for _ in range(3)]
    outputs = batch_outputs(model, loaded, None, np.zeros((2, 1, *side), np.float32))
    assert isinstance(outputs, ValueError) and "2 stacked input(s) for 3" in str(outputs)


def test_a_tile_that_cannot_be_prepared_costs_only_itself_in_its_chunk(model) -> None:
    """qc prepares a chunk's tiles together (their image checks measured at once): a tile whose input
    overflows float32 is that tile's reason, the others are prepared (a failing check: test_gate.py)."""
    from mscvision.core.imageio import DecodedImage
    from mscvision.runtime.predict import _try_prepare_decoded_many

    rng = np.random.default_rng(0)
    side = model.metadata.spec.size
    good = [rng.random((*side, 1)).astype(np.float32) for _ in range(3)]
    bad = np.full((*side, 1), 3e38, np.float32)
    bad[::2] = -3e38  # a span float32 cannot hold: x - low overflows
    tiles = [DecodedImage(x, 32, None, ()) for x in (good[0], bad, good[1], good[2])]
    out = _try_prepare_decoded_many(tiles, model.metadata, ["a", "b", "c", "d"])
    assert [p is None for p, _ in out] == [False, True, False, False]
    assert "overflow float32" in out[1][1]



def test_a_tile_whose_input_has_another_shape_is_that_tiles_error_and_takes_no_slot(model) -> None:
    from mscvision.runtime.inputs import PreparedInput
    from mscvision.runtime.tiles import _into_row

    row_inputs = np.zeros((4, *model.metadata.input_shape), np.float32)
    odd = PreparedInput(np.ones((1, 5, 5), np.float32))
    (_, _, _, (prepared, reason), slot), k = _into_row((None, "t", 0.5, (odd, "")), row_inputs, 2)
    assert prepared is None and slot is None and k == 2 and "unexpected model input" in reason
    fine = PreparedInput(np.ones(model.metadata.input_shape, np.float32))
    (_, _, _, (prepared, _), slot), k = _into_row((None, "t", 0.5, (fine, "")), row_inputs, 2)
    assert k == 3 and slot == (row_inputs, 2) and np.shares_memory(prepared.tensor, row_inputs)
    assert row_inputs[2].sum() == fine.tensor.size


def test_the_qc_benchmark_pairs_each_qc_pass_with_a_bare_session_pass(tmp_path: Path) -> None:
    """benchmarks.qc (issue 17's throughput figure): the same tiles on both sides, and the ratio is the
    median of each round's own ratio (a slow spell on a shared machine cancels within a round)."""
    from runtime_fixtures import FIXTURE

    from mscvision.benchmarks.qc import qc_vs_session

    path = tmp_path / "f.tif"
    write_tiled_tiff(path, shapes_field(3, 4, blank_rows=1), None, tile=64)
    figures = qc_vs_session(FIXTURE, path, threads=1, rounds=3)
    assert figures["evaluated_tiles"] == 12 and len(figures["round_ratios"]) == 3
    # within the rounding of the recorded figures (3 decimals; rates to 0.1 tile/s)
    assert abs(figures["ratio"] - np.median(figures["round_ratios"])) <= 1e-3
    assert abs(figures["ratio_of_medians"] - figures["qc_tiles_s"] / figures["session_tiles_s"]) <= 5e-3
