"""Issue 13's acceptance test: the whole zoo of hostile and careless inputs, with good images among
them, in ONE `mscvision predict` run on the committed fixture model.

Asserted: every good image is `ok` with the probabilities it gets when predicted alone; every bad one
is an `error` or `review` row with a non-empty reason (each case's expected status and reason are
stated below, from what the runtime does); no `ok` row has a non-finite probability; exit code 3;
one row per input (none lost, none repeated); ignored AppleDouble files are counted on stderr, not
written as rows. The same run once more as a real subprocess, to JSONL: exit 3, strict JSON, the
same statuses.

The fixture (models/fixtures/shapes-tiny.onnx) was trained on 32x32 8-bit grey shapes
(tests/conftest.py draw_shape), reads 1 channel, accepts at most 64 px a side, percentile
intensity scaling, no trained pixel size. Some outcomes below follow from that (stated per case).

Station-side: numpy, Pillow, tifffile, onnxruntime, pytest only (no torch, no onnx).
`pytest tests/runtime/test_hostile_inputs.py -s -q` prints the zoo's row counts.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import struct
import subprocess
import sys
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import REPO, draw_shape
from mscvision.cli import main
from mscvision.core.errors import ImageError
from mscvision.runtime.inputs import prepare_input
from mscvision.runtime.model import read_metadata
from runtime_fixtures import png_declaring, protobuf_field

FIXTURE = REPO / "models" / "fixtures" / "shapes-tiny.onnx"
P_COLUMNS = ("shape.p.bar", "shape.p.disc", "count.p.one", "count.p.two")
# Batch composition may change the last float bits of a probability; rows are rounded to 6 places.
SAME_PROBABILITY = 2e-6


@dataclass(frozen=True)
class Case:
    path: str  # as the row's path column names it (relative to the run's folder)
    status: str  # expected: ok | review | error
    reason: str = ""  # regex the reason must match (review/error)
    note: str = ""  # regex the notes column must match
    good: bool = False  # ok, and the same probabilities as when predicted alone
    gap: bool = False  # `ok` although it is not a real image: a known gap of the floor checks (stated)


def _shape(seed: int, shape: str = "disc", count: int = 1, size: int = 32) -> np.ndarray:
    """A grey shape image like the fixture's training data (conftest.make_shapes_dataset), uint8."""
    return (draw_shape(np.random.default_rng(seed), size, shape, count) * 255).astype(np.uint8)


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    Image.fromarray(array, mode).save(path, format="PNG")


def _deflate_tiff_bomb(path: Path, side: int = 20000) -> None:
    """A real decompression bomb: one deflate strip of side x side zero bytes (400 MB decoded for
    20000), a few hundred KiB on disk. Hand-written TIFF, so writing it needs no 400 MB buffer."""
    packer, block, strip = zlib.compressobj(9), bytes(1 << 22), []
    remaining = side * side
    while remaining:
        n = min(remaining, len(block))
        strip.append(packer.compress(block[:n]))
        remaining -= n
    data = b"".join(strip) + packer.flush()
    tags = [(256, 4, side), (257, 4, side), (258, 3, 8), (259, 3, 8), (262, 3, 1), (273, 4, 0),
            (277, 3, 1), (278, 4, side), (279, 4, len(data))]
    ifd_size = 2 + 12 * len(tags) + 4
    tags[5] = (273, 4, 8 + ifd_size)  # the strip follows the IFD
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
        for tag, kind, value in tags) + struct.pack("<I", 0)
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + ifd + data)
    assert path.stat().st_size < 2**20


def _ome_with_pixel_size(path: Path, array: np.ndarray, um: float) -> None:
    tifffile.imwrite(path, array, ome=True, metadata={"axes": "YX", "PhysicalSizeX": um, "PhysicalSizeY": um})


def build_zoo(run_dir: Path) -> tuple[list[Case], list[str], int]:
    """Writes the zoo under ``run_dir`` and returns (cases, the predict inputs, AppleDouble files).

    Inputs are relative to ``run_dir`` (the run's current folder): the folder ``zoo`` searched
    recursively, plus three named on the command line.
    """
    zoo = run_dir / "zoo"
    (zoo / "good").mkdir(parents=True)
    (zoo / "deep" / "er").mkdir(parents=True)
    cases: list[Case] = []

    def case(rel: str, status: str, reason: str = "", note: str = "", good: bool = False,
             named: bool = False, gap: bool = False) -> Path:
        """One expected row; ``named``: given on the command line, beside ``zoo`` (else inside it)."""
        cases.append(Case(rel if named else f"zoo/{rel}", status, reason, note, good or gap, gap))
        return run_dir / rel if named else zoo / rel

    # --- good images: the fixture's own kind of data ------------------------------------------------
    for i in range(6):
        shape, count = ("disc", "bar")[i % 2], (1, 2)[(i // 2) % 2]
        _png(case(f"good/{shape}-{count}-{i}.png", "ok", good=True), _shape(i, shape, count))
    _png(case("good/48px.png", "ok", good=True), _shape(10, size=48))  # within the 64 px cap, resized
    tifffile.imwrite(case("good/float.tif", "ok", good=True), _shape(11).astype(np.float32) / 255)
    # float pixels are scaled by percentiles like 8-bit ones: accepted (no training_bit_depths check
    # unless the model's intensity scaling is "fixed")
    grey = _shape(12)
    _png(case("good/grey-as-rgb.png", "ok", good=True), np.dstack([grey] * 3))  # equal channels: grey
    _png(case("good/alpha.png", "ok", r"", r"dropped alpha of LA", good=True),
         np.dstack([_shape(13), np.full((32, 32), 200, np.uint8)]), "LA")
    Image.fromarray(_shape(14)).save(case("good/shape.jpg", "ok", good=True), format="JPEG", quality=95)
    # 16-bit: the fixture's metadata says training_bit_depths [8] but its intensity scaling is
    # percentile, which is scale-free, so a 16-bit image is accepted (check_input refuses another bit
    # depth only under "fixed" scaling); asserted below to match the 8-bit image's probabilities
    tifffile.imwrite(case("good/16bit.tif", "ok", good=True), _shape(0, "disc", 1).astype(np.uint16) * 257)
    # a file name that a spreadsheet would run as a formula: ok, its CSV path cell prefixed with '
    _png(case("=SUM(1+1).png", "ok", good=True, named=True), _shape(15))

    # --- good content under a misleading name: decoded by content, ok with a note -------------------
    Image.fromarray(_shape(16)).save(case("png-named.tif", "ok", note=r"decoded as PNG by its content despite "
                                                                      r"the \.tif name", good=True), format="PNG")
    tifffile.imwrite(case("tiff-named.png", "ok", note=r"decoded as TIFF by its content despite the \.png name",
                          good=True), _shape(17))
    # a z-stack is max-projected (decode's documented z_projection "max"): ok, with the note
    z = np.stack([_shape(18), _shape(18) // 2, _shape(18) // 3])
    tifffile.imwrite(case("z-stack.ome.tif", "ok", note="z-stack reduced by maximum-intensity projection",
                          good=True), z, ome=True, metadata={"axes": "ZYX"})
    # several images (TIFF series) in one file: the first is predicted, and the notes say so
    with tifffile.TiffWriter(case("two-series.tif", "ok", note=r"holds 2 images \(TIFF series\); only the first",
                                  good=True)) as tif:
        tif.write(_shape(33))
        tif.write(_shape(34, size=48))
    # An absurd (1e6 µm) or zero pixel size in the metadata: the fixture has no trained pixel size
    # (preprocess.pixel_size_um null), so nothing is rescaled and the stated size is not used at all:
    # ok, no rescale note. A model WITH a trained pixel size refuses both (asserted in
    # test_pixel_size_cases_are_refused_by_a_rescaling_model below).
    _ome_with_pixel_size(case("pixel-size-absurd.ome.tif", "ok", good=True), _shape(19), 1e6)
    _ome_with_pixel_size(case("pixel-size-zero.ome.tif", "ok", good=True), _shape(20), 0.0)
    # A pure-noise frame is NOT refused: it has contrast, the right size, depth and channels, so the
    # floor checks pass and the model labels it (`ok`). Only a learned out-of-distribution gate (a later
    # issue) can doubt it. This is a known gap, asserted so that closing it shows up here.
    _png(case("noise.png", "ok", gap=True), np.random.default_rng(99).integers(0, 256, (32, 32), dtype=np.uint8))

    # --- non-finite and degenerate pixels -------------------------------------------------------
    nan = _shape(21).astype(np.float32) / 255
    nan[3, 4] = np.nan
    tifffile.imwrite(case("nan.tif", "error", r"non-finite pixel values \(1 NaN of 1,024\)"), nan)
    inf = _shape(22).astype(np.float32) / 255
    inf[5, 6], inf[7, 8] = np.inf, -np.inf
    tifffile.imwrite(case("inf.tif", "error", r"non-finite pixel values \(2 infinite of 1,024\)"), inf)
    # finite but extreme floats: (x - lo) overflows float32 in the percentile scaling; the model's
    # input would be NaN. Refused before the model (prepare_input), naming the cause; before that fix
    # the row blamed "the model's output".
    extreme = np.full((32, 32), 3e38, np.float32)
    extreme[:16] = -3e38
    tifffile.imwrite(case("float-extreme.tif", "error", r"pixel values \(-3e\+38 to 3e\+38\) overflow"), extreme)
    tifffile.imwrite(case("float64-huge.tif", "error", r"beyond float32's range"), np.full((32, 32), 1e300))
    # a blank 128x128 frame is refused by size first: the fixture accepts at most 64 px a side
    _png(case("blank-128.png", "error", r"128x128 px is much larger"), np.full((128, 128), 128, np.uint8))
    near = "constant or nearly so"
    _png(case("blank-32.png", "review", near), np.full((32, 32), 128, np.uint8))
    _png(case("blank-64.png", "review", near), np.full((64, 64), 7, np.uint8))
    hot = np.full((64, 64), 30, np.uint8)
    hot[tuple(np.random.default_rng(1).integers(0, 64, (2, 5)))] = 255  # 5 hot pixels are not content
    _png(case("blank-hot-pixels.png", "review", near), hot)
    # The floor measures between the 1st and 99th percentiles: hot pixels on up to 1% of a blank frame
    # are not content (with the spec's 99.8th, these 3 of 1,024 passed as an image and got `ok`)
    blank3 = np.full((32, 32), 30, np.uint8)
    blank3.flat[[100, 500, 900]] = 255
    _png(case("blank-32-3-hot-pixels.png", "review", near), blank3)
    _png(case("saturated.png", "review", near), np.full((32, 32), 255, np.uint8))
    tifffile.imwrite(case("saturated-16bit.tif", "review", near), np.full((32, 32), 65535, np.uint16))
    small = r"is too small: this model needs at least 8x8 px"
    _png(case("one-pixel.png", "error", small), np.full((1, 1), 200, np.uint8))
    _png(case("tiny-4x4.png", "error", small), _shape(23, size=4))
    _png(case("thin-64x4.png", "error", small), _shape(24, size=64)[:4])
    _png(case("large-400.png", "error", r"400x400 px is much larger .* at most 64 px"), _shape(25, size=400))

    # --- broken, truncated, wrong or hostile files --------------------------------------------------
    undecodable = r"cannot be decoded as an image"
    case("empty.png", "error", undecodable).write_bytes(b"")
    case("empty.tif", "error", undecodable).write_bytes(b"")
    full = zoo / "good" / "disc-1-0.png"
    case("truncated.png", "error", undecodable).write_bytes(full.read_bytes()[:len(full.read_bytes()) // 2])
    tifffile.imwrite(zoo / "whole.tmp", _shape(26))  # not an image name: never collected itself
    whole = (zoo / "whole.tmp").read_bytes()
    case("truncated.tif", "error", undecodable).write_bytes(whole[:len(whole) - 300])
    (zoo / "whole.tmp").unlink()
    case("text.png", "error", undecodable).write_text("path,label\nthis is not an image\n")
    # Pillow would hand EPS to Ghostscript: only PNG/JPEG plugins are allowed, so it is never run
    case("eps.png", "error", undecodable).write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n")
    Image.fromarray(_shape(27)).save(case("gif-named.png", "error", undecodable), format="GIF")
    _png(case("colour-rgb.png", "error", r"has 3 channel\(s\); the model expects 1"),
         np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    tifffile.imwrite(case("two-channel.tif", "error", r"has 2 channel\(s\); the model expects 1"),
                     np.stack([_shape(28), _shape(29)]), photometric="minisblack", metadata={"axes": "CYX"})
    tifffile.imwrite(case("time-series.ome.tif", "error", r"a time series \(3 time points\)"),
                     np.stack([_shape(30)] * 3), ome=True, metadata={"axes": "TYX"})
    tifffile.imwrite(case("int32-negative.tif", "error", r"pixel type int32 is not supported"),
                     _shape(31).astype(np.int32) - 100)
    _deflate_tiff_bomb(case("bomb-20000.tif", "error", r"declares 20000x20000 px .* it was not decoded"))
    png_declaring(case("declares-9000.png", "error", r"declares 9000x9000 px .* it was not decoded"), 9000, 9000)
    png_declaring(case("declares-20000.png", "error", r"decompression-bomb guard"), 20000, 20000)

    # --- what the folder search meets ---------------------------------------------------------------
    os.symlink("nowhere.png", case("broken-link.png", "error", r"a broken symbolic link"))
    os.symlink("../..", zoo / "deep" / "er" / "back")  # leads back to zoo: a loop inside the recursed folder
    cases.append(Case("zoo/deep/er/back", "error", r"a symbolic link loop"))
    _png(zoo / "deep" / "er" / "nested.png", _shape(32))
    cases.append(Case("zoo/deep/er/nested.png", "ok", good=True))
    os.mkfifo(case("pipe.png", "error", r"not a regular file"))
    latin1 = os.path.join(os.fsencode(zoo), b"caf\xe9.png")  # a Latin-1 name: not UTF-8
    with open(latin1, "wb") as f:
        f.write((zoo / "good" / "disc-1-0.png").read_bytes())
    cases.append(Case(r"zoo/caf\xe9.png", "error", r"its name is not valid UTF-8"))
    appledouble = [zoo / "._noise.png", zoo / "good" / "._disc-1-0.png"]
    for path in appledouble:  # macOS resource forks: not images, ignored with a count
        path.write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")

    # --- careless command lines -------------------------------------------------------------------
    case("missing.png", "error", r"no such file. Fix: check the path \(relative paths are resolved against the "
                                 r"current folder", named=True)
    case("nomatch-*.png", "error", r"no file matches this pattern", named=True)
    return cases, ["zoo", "=SUM(1+1).png", "missing.png", "nomatch-*.png"], len(appledouble)


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _csv_path(path: str) -> str:
    """A path as the CSV writes it: a cell that a spreadsheet would run gets a leading '."""
    return "'" + path if path.startswith(("=", "+", "-", "@")) else path


def _predict(*args: str) -> int:
    return main(["predict", "--threads", "1", "--recursive", str(FIXTURE), *args])


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory):
    """The zoo, predicted in one in-process run: (cases, rows by path, exit code, stderr, run folder)."""
    run_dir = tmp_path_factory.mktemp("hostile")
    cases, inputs, appledouble = build_zoo(run_dir)
    out = run_dir / "zoo.csv"
    cwd = os.getcwd()
    os.chdir(run_dir)  # relative inputs: the `=` file name begins its path cell
    try:
        code, err = _run_capturing_stderr(lambda: _predict(*inputs, "--out", str(out)), run_dir / "stderr.txt")
    finally:
        os.chdir(cwd)
    return cases, inputs, appledouble, _csv_rows(out), code, err, run_dir


def _run_capturing_stderr(call, log: Path) -> tuple[int, str]:
    """``call()``'s result and what it wrote to sys.stderr (the module fixture cannot use capsys)."""
    previous = sys.stderr
    with open(log, "w", encoding="utf-8") as sys.stderr:
        try:
            code = call()
        finally:
            sys.stderr = previous
    return code, log.read_text(encoding="utf-8")


def test_zoo_in_one_run_every_row_as_expected(zoo_run):
    cases, _, appledouble, rows, code, err, _ = zoo_run
    _print_summary(cases, rows)
    assert code == 3  # some inputs failed
    by_path = {r["path"]: r for r in rows}
    expected_paths = [_csv_path(c.path) for c in cases]
    # complete: one row per input, none lost, none repeated, nothing else (no AppleDouble rows)
    assert len(rows) == len(by_path) == len(cases), Counter(r["path"] for r in rows).most_common(3)
    assert sorted(by_path) == sorted(expected_paths)
    assert not any("._" in r["path"] for r in rows)
    assert f"warning: ignored {appledouble} AppleDouble ._* files" in err
    wrong = []
    for c in cases:
        row = by_path[_csv_path(c.path)]
        if row["status"] != c.status:
            wrong.append(f"{c.path}: {row['status']} ({row['reason'] or row['notes']}), expected {c.status}")
            continue
        if c.status != "ok":
            assert row["reason"].strip(), f"{c.path}: {c.status} without a reason"
            assert re.search(c.reason, row["reason"]), f"{c.path}: reason {row['reason']!r} !~ {c.reason!r}"
        if c.note:
            assert re.search(c.note, row["notes"]), f"{c.path}: notes {row['notes']!r} !~ {c.note!r}"
    assert not wrong, "\n".join(wrong)


def test_zoo_ok_rows_have_finite_labelled_probabilities_and_no_label_otherwise(zoo_run):
    _, _, _, rows, _, _, _ = zoo_run
    for row in rows:
        if row["status"] == "ok":
            values = [float(row[c]) for c in P_COLUMNS]
            assert all(math.isfinite(v) and 0 <= v <= 1 for v in values), row
            assert row["shape.label"] in ("bar", "disc") and row["count.label"] in ("one", "two"), row
            assert not row["reason"], row
        else:
            assert row["shape.label"] in ("", "review") and row["count.label"] in ("", "review"), row
            if row["status"] == "error":
                assert all(row[c] == "" for c in P_COLUMNS), row  # no probabilities on an error row


def test_zoo_good_images_get_the_probabilities_they_get_alone(zoo_run, tmp_path, capsys):
    cases, _, _, rows, _, _, run_dir = zoo_run
    by_path = {r["path"]: r for r in rows}
    good = [c for c in cases if c.good]
    assert len(good) >= 21
    for i, c in enumerate(good):
        out = tmp_path / f"alone-{i}.csv"
        cwd = os.getcwd()
        os.chdir(run_dir)
        try:
            assert main(["predict", "--threads", "1", str(FIXTURE), c.path, "--out", str(out)]) == 0, c.path
        finally:
            os.chdir(cwd)
        (alone,) = _csv_rows(out)
        together = by_path[_csv_path(c.path)]
        assert alone["status"] == together["status"] == "ok", c.path
        for column in P_COLUMNS:
            assert abs(float(alone[column]) - float(together[column])) <= SAME_PROBABILITY, (c.path, column)
        assert (alone["shape.label"], alone["count.label"]) == (together["shape.label"], together["count.label"])


def test_zoo_16_bit_copy_is_read_like_the_8_bit_image(zoo_run):
    """The documented behaviour for another bit depth under percentile scaling: the same image at
    16 bits (x 257) is the same model input, so the same answer."""
    _, _, _, rows, _, _, _ = zoo_run
    by_path = {r["path"]: r for r in rows}
    eight, sixteen = by_path["zoo/good/disc-1-0.png"], by_path["zoo/good/16bit.tif"]
    for column in P_COLUMNS:
        assert abs(float(eight[column]) - float(sixteen[column])) <= 1e-5, column


def test_pixel_size_cases_are_refused_by_a_rescaling_model(zoo_run):
    """The zoo's absurd and zero pixel sizes are harmless to the fixture only because it does not
    rescale; a model trained at 0.5 µm/px refuses them instead of obeying them."""
    _, _, _, _, _, _, run_dir = zoo_run
    metadata = read_metadata(FIXTURE)
    rescaling = dataclasses.replace(metadata, spec=dataclasses.replace(metadata.spec, pixel_size_um=0.5))
    for name in ("pixel-size-absurd.ome.tif", "pixel-size-zero.ome.tif"):
        with pytest.raises(ImageError, match="outside the plausible"):
            prepare_input(run_dir / "zoo" / name, rescaling)
        assert prepare_input(run_dir / "zoo" / name, metadata).notes == ()  # the fixture: used as is


def test_zoo_as_a_real_process_to_strict_jsonl(zoo_run, tmp_path):
    cases, inputs, appledouble, rows, _, _, run_dir = zoo_run
    out = tmp_path / "zoo.jsonl"
    result = subprocess.run([sys.executable, "-m", "mscvision", "predict", "--threads", "1", "--recursive",
                             str(FIXTURE), *inputs, "--out", str(out)],
                            cwd=run_dir, capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert f"ignored {appledouble} AppleDouble ._* files" in result.stderr

    def no_constants(name):
        raise AssertionError(f"bare {name} in JSONL")

    lines = out.read_bytes().decode("utf-8").splitlines()  # valid UTF-8 throughout
    records = [json.loads(line, parse_constant=no_constants) for line in lines]
    assert len(records) == len(cases)
    statuses = {r["path"]: r["status"] for r in records}  # JSONL paths are not CSV-neutralised
    assert statuses == {c.path: c.status for c in cases}
    csv_statuses = {r["path"]: r["status"] for r in rows}
    assert all(csv_statuses[_csv_path(p)] == s for p, s in statuses.items())


def _print_summary(cases: list[Case], rows: list[dict]) -> None:
    """The zoo's row counts, for the issue's closing note (`pytest ... -s -q` shows them)."""
    by_path = {r["path"]: r for r in rows}
    counts = Counter(r["status"] for r in rows)
    print(f"\nhostile-input zoo: {len(rows)} rows: " + ", ".join(f"{counts[s]} {s}" for s in ("ok", "review", "error")))
    gaps = [c.path for c in cases if c.gap]
    print(f"  good images: {sum(c.good and not c.gap for c in cases)} (expected ok); known gaps, ok although "
          f"not real images: {len(gaps)} ({', '.join(gaps)})")
    for c in cases:
        row = by_path.get(_csv_path(c.path), {})
        detail = row.get("reason") or row.get("notes") or ""
        print(f"  {row.get('status', 'MISSING'):6} {c.path:34} {detail[:90]}")


def test_finite_pixels_that_overflow_when_scaled_are_refused_by_name(tmp_path):
    """Issue 13 item 1, found by the zoo: -3e38..3e38 floats are finite, but percentile scaling's
    ``x - low`` overflows float32; the row blamed "the model's output is not finite" before."""
    metadata = read_metadata(FIXTURE)
    extreme = np.full((32, 32), 3e38, np.float32)
    extreme[:, :16] = -3e38
    tifffile.imwrite(tmp_path / "extreme.tif", extreme)
    with pytest.raises(ImageError, match=r"overflow float32 when scaled, so the model's input would not be finite"):
        prepare_input(tmp_path / "extreme.tif", metadata)
    tifffile.imwrite(tmp_path / "large.tif", extreme / 4)  # a span float32 still holds: accepted
    assert np.isfinite(prepare_input(tmp_path / "large.tif", metadata).tensor).all()


def test_float64_beyond_float32_is_refused_as_such_not_as_infinite(tmp_path):
    """A finite float64 1e300 became "1,024 infinite" pixels in the reason (cast first, checked after)."""
    tifffile.imwrite(tmp_path / "f64.tif", np.full((32, 32), 1e300))
    with pytest.raises(ImageError, match=r"float64 pixel values up to 1e\+300, beyond float32's range"):
        prepare_input(tmp_path / "f64.tif", read_metadata(FIXTURE))
    nan = np.full((32, 32), 0.5)
    nan[0, 0] = np.nan
    tifffile.imwrite(tmp_path / "nan64.tif", nan)
    with pytest.raises(ImageError, match=r"non-finite pixel values \(1 NaN of 1,024\)"):
        prepare_input(tmp_path / "nan64.tif", read_metadata(FIXTURE))


def test_a_tiff_holding_several_images_says_only_the_first_was_read(tmp_path):
    """Two series (e.g. two fields of view) in one file: the row's notes say which one was predicted."""
    with tifffile.TiffWriter(tmp_path / "two-fields.tif") as tif:
        tif.write(_shape(40))
        tif.write(_shape(41, size=48))
    prepared = prepare_input(tmp_path / "two-fields.tif", read_metadata(FIXTURE))
    assert any("holds 2 images (TIFF series); only the first, 32x32, was read" in n for n in prepared.notes)


def test_external_data_is_refused_in_the_bare_station(tmp_path):
    """Issue 13 item 5 without the onnx package (tests/test_model_checks.py's version needs it, so the
    station venv skipped it): the fixture plus one initializer whose data lives in a side file.
    A second ModelProto.graph field merges into the first (protobuf), so this is a valid model file."""
    from mscvision.core.errors import ModelError
    from mscvision.runtime.model import load_model

    location = protobuf_field(13, protobuf_field(1, b"location") + protobuf_field(2, b"split.onnx.data"))  # TensorProto.external_data
    tensor = b"\x08\x01" + b"\x10\x01" + protobuf_field(8, b"w.external") + location + b"\x70\x01"  # dims, FLOAT, name, EXTERNAL
    (tmp_path / "split.onnx").write_bytes(FIXTURE.read_bytes() + protobuf_field(7, protobuf_field(5, tensor)))
    (tmp_path / "split.onnx.data").write_bytes(bytes(4))  # the side file is there: still refused
    with pytest.raises(ModelError, match=r"1 tensor\(s\) keep their data in an external side file \(w\.external\)"):
        load_model(tmp_path / "split.onnx", threads=1)
    with pytest.raises(ModelError, match="external side file"):
        read_metadata(tmp_path / "split.onnx")
