"""One whole field → tile results, streamed (docs/architecture.md "The QC check").

The field is read band by band (core/fieldio.py: one row of tiles at a time, so a 10k x 10k 16-bit
field never sits in memory whole) and cut into square tiles (core/tiling.py). A tile covers what a
training crop covered: ``input.training_image_side`` px at the model's pixel size (the median decoded
side of the held-out crops; the model's input side for a model that does not record it), i.e.
``round(side * model_px / file_px)`` px of this file. Each tile is then a decoded image like any
other and goes through ``runtime.inputs.prepare_decoded`` (rescaling to the model's pixel size,
per-tile intensity scaling: the scope the model was trained with, since every training crop was
scaled on its own) and through predict's own batch code: the same OOD gate, abstention and
probability checks as ``mscvision predict``. Tiles with too little tissue (core.tiling's foreground
measure) are skipped as background and counted.

Nothing about one field stops the others: an unreadable field, or one cut short by a truncated
segment, comes back with ``error`` set and the tiles read before it; a field whose scale is unknown
comes back with a ``doubt`` (its well goes to review).
"""

from __future__ import annotations

import gc
import math
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable, Iterator

import numpy as np

from mscvision.core.errors import ImageError
from mscvision.core.fieldio import FieldReader, open_field
from mscvision.core.imageio import DecodedImage
from mscvision.core.preprocess import PIXEL_SIZE_RANGE_UM
from mscvision.core.tiling import TileBox, foreground_fractions, tile_grid
from mscvision.runtime.gate import load_gate
from mscvision.runtime.inputs import check_bit_depth
from mscvision.runtime.metadata import ModelMetadata
from mscvision.runtime.model import Model
from mscvision.runtime.predict import GATE, _try_prepare_decoded_many, batch_outputs, rows_from_outputs

THUMBNAIL_SIDE = 1024  # px: the overlay's base picture, at most this a side
DEFAULT_MIN_FOREGROUND = 0.05
FOREGROUND_CHUNK = 16  # tiles measured together (_measured_chunks)


@dataclass(slots=True)  # slots: thousands per field are kept for the report
class TileResult:
    box: TileBox
    foreground: float  # core.tiling.foreground_fraction of the tile
    status: str  # ok | review (a label withheld: abstained, doubted or flagged) | background | error
    flagged: bool  # the OOD gate flagged it: its probabilities are not to be used
    abstained: dict[str, bool]  # per task: no label given (below the certified threshold, or doubted)
    reason: str
    probabilities: dict[str, np.ndarray] | None  # per task, calibrated; None for background / error
    labels: dict[str, str]  # per task: a class, or "review"
    row: dict | None = None  # predict's row for the tile (kept only when asked: it is large)


@dataclass
class FieldScan:
    path: str
    height: int
    width: int
    channels: int
    bit_depth: int
    pixel_size_um: float | None  # what the tiles were cut at: the file's, else the spec's declared one
    tile_px: int  # tile side in this file's pixels
    notes: list[str] = field(default_factory=list)
    doubts: list[str] = field(default_factory=list)  # why no verdict may rest on this field (review)
    error: str = ""  # why it could not be (wholly) read; tiles read before the failure are kept
    tiles: list[TileResult] = field(default_factory=list)
    thumbnail: np.ndarray | None = None  # uint8 (th, tw) grey, for the overlay
    scale: float = 1.0  # thumbnail px per field px


def scan_field(model: Model, path: str, overlap_px: int = 0, min_foreground: float = DEFAULT_MIN_FOREGROUND,
               declared_pixel_size_um: float | None = None, batch_size: int = 32,
               progress: Callable[[str], None] | None = None, keep_rows: bool = False) -> FieldScan:
    """Every tile of one field through the model; never raises for a bad file (``error`` says why)."""
    scan = FieldScan(str(path), 0, 0, 0, 0, None, 0)
    try:
        with open_field(path) as reader, _collector_paused():
            _describe(scan, reader, model.metadata, declared_pixel_size_um)
            try:
                boxes = tile_grid(reader.height, reader.width, scan.tile_px, min(overlap_px, scan.tile_px - 1))
            except ValueError as exc:  # a field smaller than one tile
                raise ImageError(scan.path, f"{exc}. Fix: qc judges whole fields; predict single crops with "
                                            "`mscvision predict`") from None
            thumb = _Thumbnail(reader.height, reader.width)
            scan.scale = thumb.scale
            _scan_tiles(model, reader, scan, boxes, thumb, min_foreground, batch_size, progress, keep_rows)
            scan.thumbnail = thumb.finish()
    except ImageError as exc:
        scan.error = exc.reason
    except Exception as exc:  # a decoder's surprise on one odd file must not end the lot; the image says what
        scan.error = f"unexpected {type(exc).__name__} while reading it: {exc}"
    return scan


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for one field's scan, as it was afterwards. The scan keeps
    every tile's result (tens of thousands of long-lived objects, no reference cycles), and each full
    collection walks them all: ~2-3% of qc's time on a 5k field (measured, 4 alternating rounds).
    Reference counting still frees everything that is dropped."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _describe(scan: FieldScan, reader: FieldReader, metadata: ModelMetadata, declared: float | None) -> None:
    """Size, scale and tile side of the field; ``ImageError`` for what the model cannot read at all."""
    scan.height, scan.width, scan.channels, scan.bit_depth = reader.height, reader.width, reader.channels, \
        reader.bit_depth
    scan.notes = list(reader.notes)
    spec = metadata.spec
    check_bit_depth(reader.bit_depth, metadata, scan.path)
    pixel = reader.pixel_size_um
    if pixel is not None and not (math.isfinite(pixel) and PIXEL_SIZE_RANGE_UM[0] <= pixel <= PIXEL_SIZE_RANGE_UM[1]):
        raise ImageError(scan.path, f"states a pixel size of {pixel} µm, which is not plausible; tiles cannot be "
                                    "cut at the model's scale. Fix: correct the file's calibration.")
    if pixel is None and declared is not None:
        pixel = declared
        scan.notes.append(f"pixel size {declared:g} µm/px from the spec (input.pixel_size_um); the file states none")
    if pixel is None and spec.pixel_size_um is not None:
        scan.doubts.append(f"the file states no pixel size and the spec declares none, but the model was trained "
                           f"at {spec.pixel_size_um:g} µm/px: the tiles may be at the wrong scale. Fix: set "
                           "input.pixel_size_um in the spec, or write the calibration into the files")
    scan.pixel_size_um = pixel
    scan.tile_px = tile_side(metadata, pixel)


def tile_side(metadata: ModelMetadata, file_pixel_size_um: float | None) -> int:
    """Tile side in file pixels: the training crops' extent at the model's pixel size."""
    side = metadata.raw.get("input", {}).get("training_image_side") or metadata.spec.size[0]
    model_px = metadata.spec.pixel_size_um
    if model_px is None or file_pixel_size_um is None:
        return int(side)
    return max(1, round(side * model_px / file_pixel_size_um))


def _scan_tiles(model: Model, reader: FieldReader, scan: FieldScan, boxes: list[TileBox], thumb: "_Thumbnail",
                min_foreground: float, batch_size: int, progress, keep_rows: bool) -> None:
    """Tile row k+1 is read and prepared on a worker thread while the session runs row k's batches.

    Why: reading (segment decode), the foreground test, preprocessing and the image checks are numpy and
    zlib work that ran serially before each batch, with the session idle (issue 17: qc ran at 0.48 of
    the bare session). onnxruntime releases the GIL while it runs, so the two overlap; one row ahead is
    enough to hide the preparation and keeps at most two bands in memory (the streaming bound holds).
    Rows are consumed in order, so results, the thumbnail and a read error's place are as before.
    """
    gate = load_gate(model.metadata)
    pending: list[tuple[TileBox, str, float, tuple, tuple | None]] = []
    rows = _tile_rows(boxes)
    prepare = partial(_prepare_row, reader, scan, model.metadata, thumb, min_foreground)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="qc-tiles") as pool, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="qc-rows") as rows_pool:
        flush = partial(_flush, model, gate, scan, rows_pool, keep_rows)
        building = None  # the previous batch's rows, being built
        for k, prepared in enumerate(_one_ahead(pool, prepare, rows)):
            if isinstance(prepared, ImageError):
                scan.error = prepared.reason
                break
            for item in prepared:
                if isinstance(item, TileResult):  # background: counted, not evaluated
                    scan.tiles.append(item)
                    continue
                pending.append(item)
                if len(pending) >= batch_size:
                    building = flush(pending, building)
                    pending = []
            if progress is not None and (k + 1) % 8 == 0:
                progress(f"{scan.path}: tile row {k + 1}/{len(rows)}")
        building = flush(pending, building)
        if building is not None:
            building.result()
    scan.tiles.sort(key=lambda t: (t.box.row, t.box.col))


def _tile_rows(boxes: list[TileBox]) -> list[list[TileBox]]:
    """tile_grid is row-major: the boxes of each tile row, in order (one band read per row)."""
    by_row: dict[tuple[int, int], list[TileBox]] = {}
    for b in boxes:
        by_row.setdefault((b.y0, b.y1), []).append(b)
    return list(by_row.values())


def _one_ahead(pool: ThreadPoolExecutor, work: Callable, items: list) -> Iterator:
    """``work(item)`` for each item, in order, the next one already running while the caller uses this one.
    On an early exit (a read error, an exception) the one running ahead finishes and is dropped."""
    future = pool.submit(work, items[0]) if items else None
    for i in range(len(items)):
        result = future.result()
        future = pool.submit(work, items[i + 1]) if i + 1 < len(items) else None
        yield result


def _prepare_row(reader: FieldReader, scan: FieldScan, metadata: ModelMetadata, thumb: "_Thumbnail",
                 min_foreground: float, row_boxes: list[TileBox]) -> list | ImageError:
    """One tile row read and prepared (on the worker thread): a background TileResult or
    ``(box, name, foreground, (prepared, reason), slot)`` per tile, predict's ``(prepared, reason)`` with
    ``slot``, ``(row_inputs, k)``, the row of model inputs its tensor was written into (None when it
    could not be prepared); the band's ImageError when it cannot be read.

    Why one array per row: stacking a batch's 32 tensors on the session's thread cost ~2 ms a batch in qc
    (numpy drops the GIL for each array's copy, and the preparing thread holds it in between), time the
    session stood idle; a batch is now a slice of this array (issue 17)."""
    y0, y1 = row_boxes[0].y0, row_boxes[0].y1
    try:
        band = reader.read_band(y0, y1)
    except ImageError as exc:
        return exc
    thumb.add(band, y0)
    out: list = []
    row_inputs = np.empty((len(row_boxes), *metadata.input_shape), np.float32)
    k = 0
    for chunk in _measured_chunks(band, row_boxes, reader.bit_depth):
        for item in _prepared_chunk(chunk, scan, metadata, reader.bit_depth, min_foreground):
            if not isinstance(item, TileResult):
                item, k = _into_row(item, row_inputs, k)
            out.append(item)
    return out


def _prepared_chunk(chunk: list[tuple], scan: FieldScan, metadata: ModelMetadata, bit_depth: int,
                    min_foreground: float) -> list:
    """One chunk's tiles in order: a background TileResult, or ``(box, name, foreground, (prepared,
    reason))``; the tissue tiles' image checks are measured together (predict._try_prepare_decoded_many)."""
    background = [fg < min_foreground for _, _, fg in chunk]  # one test per tile, used for both lists below
    tissue = [(box, window) for (box, window, _), skip in zip(chunk, background) if not skip]
    names = [_tile_name(scan, box) for box, _ in tissue]
    decoded = [DecodedImage(window, bit_depth, scan.pixel_size_um, ()) for _, window in tissue]
    loaded = iter(zip(names, _try_prepare_decoded_many(decoded, metadata, names), strict=True))
    out = []
    for (box, _, fg), skip in zip(chunk, background):
        if skip:
            out.append(TileResult(box, fg, "background", False, {}, "too little tissue", None, {}))
        else:
            name, prepared = next(loaded)
            out.append((box, name, fg, prepared))
    return out


def _into_row(item: tuple, row_inputs: np.ndarray, k: int) -> tuple[tuple, int]:
    """A prepared tile ``(box, name, foreground, (prepared, reason))`` → its pending item, its tensor
    moved into slot ``k`` of its row's inputs (``slot`` appended); the next free slot."""
    box, name, fg, (prepared, reason) = item
    slot = None
    if prepared is not None and prepared.tensor.shape != row_inputs.shape[1:]:  # a should-never, kept per tile
        prepared, reason = None, f"unexpected model input of shape {prepared.tensor.shape} from preparing it"
    if prepared is not None:
        row_inputs[k] = prepared.tensor
        prepared, slot, k = replace(prepared, tensor=row_inputs[k]), (row_inputs, k), k + 1
    return (box, name, fg, (prepared, reason), slot), k


def _measured_chunks(band: np.ndarray, row_boxes: list[TileBox], bit_depth: int) -> Iterator[list[tuple]]:
    """[(box, window, foreground fraction)] of one row's tiles, FOREGROUND_CHUNK tiles at a time. The
    foreground measure and the image checks' Haar pyramid run on a chunk at once (the row's tiles are one
    size): their many small numpy calls cost more in per-call overhead than in arithmetic, and a chunk
    bounds their temporaries (a whole row of small tiles at once held ~8 MiB more, measured)."""
    for i in range(0, len(row_boxes), FOREGROUND_CHUNK):
        boxes = row_boxes[i:i + FOREGROUND_CHUNK]
        windows = np.stack([band[:, box.x0:box.x1] for box in boxes])
        yield list(zip(boxes, windows, foreground_fractions(windows, bit_depth).tolist()))


def _tile_name(scan: FieldScan, box: TileBox) -> str:
    return f"{scan.path}[y={box.y0}:{box.y1},x={box.x0}:{box.x1}]"


def _flush(model: Model, gate, scan: FieldScan, rows_pool: ThreadPoolExecutor, keep_rows: bool,
           pending: list, building: Future | None) -> Future | None:
    """One batch through the session here; its rows are built on ``rows_pool`` while this thread runs
    the next batch. Building rows (the gate's p-values and reasons, the row dicts) is Python that held
    the session idle for ~0.1 ms a tile (issue 17). ``building``, the previous batch's, is waited for
    first: batches are appended in order, at most one waits in memory, and its failure is raised here."""
    if not pending:
        return building
    loaded = [loaded for *_, loaded, _ in pending]
    outputs = batch_outputs(model, loaded, gate, _stacked([slot for *_, slot in pending]))
    if building is not None:
        building.result()
    return rows_pool.submit(_append_rows, model, gate, scan, keep_rows, pending, loaded, outputs)


def _stacked(slots: list[tuple[np.ndarray, int] | None]) -> np.ndarray | None:
    """A batch's model inputs as one array from their rows' slots (``_prepare_row``): a view when they
    are consecutive in one row, else the rows' runs joined (a copy per row, not per tile)."""
    runs: list[list] = []  # [row_inputs, first, end]
    for slot in slots:
        if slot is None:
            continue
        row_inputs, k = slot
        if runs and runs[-1][0] is row_inputs and runs[-1][2] == k:
            runs[-1][2] = k + 1
        else:
            runs.append([row_inputs, k, k + 1])
    if not runs:
        return None
    if len(runs) == 1:
        return runs[0][0][runs[0][1]:runs[0][2]]
    return np.concatenate([row_inputs[a:b] for row_inputs, a, b in runs])


def _append_rows(model: Model, gate, scan: FieldScan, keep_rows: bool, pending: list, loaded: list, outputs) -> None:
    rows = rows_from_outputs(model, [name for _, name, *_ in pending], loaded, gate, outputs)
    for (box, _, fg, *_), row in zip(pending, rows):
        scan.tiles.append(tile_result(box, fg, row, model.metadata, keep_rows))


def tile_result(box: TileBox, foreground: float, row: dict, metadata: ModelMetadata, keep_row: bool) -> TileResult:
    """predict's row for a tile → its TileResult: labels, abstentions, the gate, the probabilities."""
    if row["status"] == "error":
        return TileResult(box, foreground, "error", False, {}, row["reason"], None, {}, row if keep_row else None)
    probs, labels, abstained = {}, {}, {}
    for task in metadata.tasks:
        probs[task.name] = np.array([row[f"{task.name}.p.{c}"] for c in task.classes], dtype=np.float64)
        labels[task.name] = row[f"{task.name}.label"]
        abstained[task.name] = labels[task.name] not in task.classes
    return TileResult(box, foreground, row["status"], row.get(GATE) == "flagged", abstained, row["reason"], probs,
                      labels, row if keep_row else None)


class _Thumbnail:
    """A nearest-neighbour thumbnail gathered band by band; grey, contrast-stretched at the end. Held in
    the field's own dtype (2 MiB for a 16-bit field) and stretched in row chunks, so that it adds little
    to a streamed scan's peak."""

    def __init__(self, height: int, width: int):
        self.scale = min(1.0, THUMBNAIL_SIDE / max(height, width))
        self.th, self.tw = max(1, round(height * self.scale)), max(1, round(width * self.scale))
        self.src_y = np.minimum((np.arange(self.th) + 0.5) / self.scale, height - 1).astype(np.int64)
        self.src_x = np.minimum((np.arange(self.tw) + 0.5) / self.scale, width - 1).astype(np.int64)
        self.values: np.ndarray | None = None

    def add(self, band: np.ndarray, y0: int) -> None:
        rows = np.nonzero((self.src_y >= y0) & (self.src_y < y0 + band.shape[0]))[0]
        if not rows.size:
            return
        if self.values is None:
            self.values = np.zeros((self.th, self.tw), dtype=band.dtype)
        picked = band[self.src_y[rows] - y0][:, self.src_x]
        self.values[rows] = picked.mean(axis=2) if picked.shape[2] > 1 else picked[:, :, 0]

    def finish(self) -> np.ndarray:
        out = np.zeros((self.th, self.tw), dtype=np.uint8)
        if self.values is None:
            return out
        low, high = np.percentile(self.values[::4, ::4], (0.5, 99.5))
        span = max(float(high - low), 1e-12)
        for y in range(0, self.th, 64):
            chunk = (self.values[y:y + 64].astype(np.float32) - low) / span
            out[y:y + 64] = (np.clip(chunk, 0, 1) * 255).astype(np.uint8)
        return out
