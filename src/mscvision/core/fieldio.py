"""Whole fields read as a stream of horizontal bands, never as one array.

A 10k x 10k 16-bit field is 200 MB as stored and 800 MB as float32; decoding it whole, then
preprocessing it, would hold it several times over. ``open_field`` reads the header only, and
``FieldReader.read_band(y0, y1)`` decodes just the TIFF segments (tiles or strips) that cross rows
``y0:y1``, with tifffile's own per-segment decoder (so every compression tifffile reads works). An
uncompressed contiguous TIFF is memory-mapped instead. PNG and JPEG cannot be read by rows with the
decoders we have, so they are decoded whole, under the same pixel cap as ``predict``.

Bands come out as ``core.imageio`` would decode them: (rows, W, C), uint8 / uint16 / float32, with
the same refusals (non-finite floats, unsupported types) and the same pixel-size reading, so a tile
cut from a band is what ``decode_image`` would give for that tile as its own file.

A segment that cannot be read (a truncated file, a corrupt tile) raises ``ImageError`` naming the
rows: the caller (runtime/tiles.py) keeps the tiles read so far and reports the field as broken.
"""

from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from mscvision.core.errors import ImageError
from mscvision.core.imageio import (DEFAULT_MAX_PIXELS, DecodedImage, _normalise_dtype, _ome_pixel_size,
                                    _resolution_pixel_size, decode_image, sniff_format)

# A whole field may be far larger than predict's per-image cap (2**26 values): it is streamed, so the
# cap here only bounds what a header may declare (4 * 10**8 values: 20k x 20k grey) before anything is read.
MAX_FIELD_VALUES = 4 * 10**8
_DTYPE_DEPTH = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16, np.dtype(np.float32): 32}


@dataclass
class FieldReader:
    path: str
    height: int
    width: int
    channels: int
    bit_depth: int  # as imageio reports it: 8, 16 or 32 (float)
    pixel_size_um: float | None
    notes: list[str] = field(default_factory=list)
    streamed: bool = True  # False: the decoder could only read the whole image (PNG / JPEG)

    def read_band(self, y0: int, y1: int) -> np.ndarray:  # pragma: no cover - the two readers below
        raise NotImplementedError


@contextmanager
def open_field(path: str | Path, max_values: int = MAX_FIELD_VALUES) -> Iterator[FieldReader]:
    """The field's header, and a band reader; ``ImageError`` (naming the file) when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, "no such file" if not path.exists() else "is not a regular file")
    kind = sniff_format(path)
    with ExitStack() as stack:
        if kind == "TIFF":
            yield _tiff_reader(path, stack, max_values)
        elif kind in ("PNG", "JPEG"):
            yield _whole_reader(path)
        else:
            raise ImageError(path, "is not a PNG, JPEG or TIFF file (by its content). Fix: export the field "
                                   "as (OME-)TIFF.")


class _WholeReader(FieldReader):
    """PNG / JPEG: decoded once, whole, within predict's pixel cap; bands are views of it."""

    array: np.ndarray

    def read_band(self, y0: int, y1: int) -> np.ndarray:
        return self.array[y0:y1]


def _whole_reader(path: Path) -> FieldReader:
    decoded = decode_image(path, max_pixels=DEFAULT_MAX_PIXELS)
    h, w, c = decoded.array.shape
    reader = _WholeReader(str(path), h, w, c, decoded.bit_depth, decoded.pixel_size_um, list(decoded.notes), False)
    reader.array = decoded.array
    return reader


class _TiffBandReader(FieldReader):
    """One TIFF page (or one page per channel), read segment by segment."""

    pages: list  # tifffile pages, one per channel plane (one page when samples are interleaved)
    dtype: np.dtype
    segment_h: int
    segment_w: int
    memmaps: list | None
    _cache: dict

    def read_band(self, y0: int, y1: int) -> np.ndarray:
        if not 0 <= y0 < y1 <= self.height:
            raise ValueError(f"band rows {y0}:{y1} outside 0:{self.height}")
        if self.memmaps is not None:
            planes = [np.asarray(m[y0:y1]) for m in self.memmaps]
        else:
            planes = [self._page_band(k, y0, y1) for k in range(len(self.pages))]
        band = planes[0] if len(planes) == 1 else np.concatenate(planes, axis=2)
        decoded = _normalise_dtype(Path(self.path), DecodedImage(band, 0, self.pixel_size_um, ()))
        return decoded.array

    def _page_band(self, k: int, y0: int, y1: int) -> np.ndarray:
        rows = [self._segment_row(k, r) for r in range(y0 // self.segment_h, (y1 - 1) // self.segment_h + 1)]
        strip = rows[0] if len(rows) == 1 else np.concatenate(rows, axis=0)
        top = (y0 // self.segment_h) * self.segment_h
        return strip[y0 - top:y1 - top]

    def _segment_row(self, k: int, seg_row: int) -> np.ndarray:
        """One row of segments of page ``k``, full width: the last two are kept, because consecutive
        tile rows (and their overlap) cross the same segments and each is decoded once."""
        key = (k, seg_row)
        if key not in self._cache:
            if len(self._cache) >= 2 * len(self.pages):
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = self._decode_segment_row(self.pages[k], seg_row)
        return self._cache[key]

    def _decode_segment_row(self, page, seg_row: int) -> np.ndarray:
        samples = 1 if len(self.pages) > 1 else self.channels
        ys = seg_row * self.segment_h
        out = np.empty((min(self.segment_h, self.height - ys), self.width, samples), dtype=self.dtype)
        across = math.ceil(self.width / self.segment_w)
        fh = page.parent.filehandle
        for seg_col in range(across):
            index = seg_row * across + seg_col
            try:
                offset, count = page.dataoffsets[index], page.databytecounts[index]
                fh.seek(offset)
                data = fh.read(count)
                if len(data) < count:
                    raise ValueError(f"{count - len(data)} of its {count} bytes are missing")
                segment, _, shape = page.decode(data, index, jpegtables=page.jpegtables)
                if segment is None:
                    raise ValueError("it is empty")
            except Exception as exc:  # tifffile / imagecodecs raise many kinds for one corrupt segment
                raise ImageError(self.path, f"rows {ys}-{ys + out.shape[0]} cannot be read (segment {index}: "
                                            f"{type(exc).__name__}: {exc}); the file is truncated or corrupt. "
                                            "Fix: copy or export it again.") from None
            seg = np.asarray(segment).reshape(shape)[0]  # (depth 1) -> (h, w, samples)
            xs = seg_col * self.segment_w
            right = min(xs + seg.shape[1], self.width)
            out[:, xs:right] = seg[:out.shape[0], :right - xs]
        return out


def _tiff_reader(path: Path, stack: ExitStack, max_values: int) -> FieldReader:
    import tifffile

    try:
        tif = stack.enter_context(tifffile.TiffFile(path))
        series = tif.series[0]
        axes, shape = series.axes.upper(), tuple(series.shape)
    except Exception as exc:
        raise ImageError(path, f"cannot be read as TIFF ({type(exc).__name__}: {exc}). Fix: check that the "
                               "file is complete.") from None
    notes = [f"the file holds {len(tif.series)} images (TIFF series); only the first was read"] \
        if len(tif.series) > 1 else []
    height, width, channels, pages = _layout(path, series, axes, shape)
    if height * width * channels > max_values:
        raise ImageError(path, f"declares {width}x{height} px x {channels} channel(s), more than a field may "
                               f"hold ({max_values:,} values). Fix: split the scan into fields.")
    page = pages[0]
    pixel_size = _ome_pixel_size(tif)
    if pixel_size is None:
        pixel_size = _resolution_pixel_size(tif)
    dtype = np.dtype(page.dtype)
    depth = _DTYPE_DEPTH.get(dtype, 32 if dtype.kind == "f" else 16)
    reader = _TiffBandReader(str(path), height, width, channels, depth, pixel_size, notes)
    reader.pages, reader.dtype, reader._cache = pages, dtype, {}
    reader.segment_h = page.tilelength if page.is_tiled else page.rowsperstrip or height
    reader.segment_w = page.tilewidth if page.is_tiled else width
    reader.memmaps = _memmaps(path, pages) if all(p.is_memmappable for p in pages) else None
    if len(pages) > 1:
        reader.notes.append(f"{len(pages)} pages read as channels")
    return reader


def _layout(path: Path, series, axes: str, shape: tuple) -> tuple[int, int, int, list]:
    """(height, width, channels, pages): a 2-D field, samples interleaved in one page or one page
    per channel. Z-stacks and time series are refused (a projection needs every plane at once)."""
    sizes = dict(zip(axes, shape))
    for axis, size in sizes.items():
        if axis not in "YXCS" and size > 1:
            raise ImageError(path, f"TIFF axis {axis!r} has {size} planes (axes {axes}); a QC field is one 2-D "
                                   "image. Fix: project or split the stack before the QC run.")
    if "Y" not in sizes or "X" not in sizes:
        raise ImageError(path, f"no Y/X axes in TIFF axes {axes!r}.")
    pages = list(series.pages)
    if any(p is None for p in pages):
        raise ImageError(path, "some of its pages are missing (truncated file). Fix: copy or export it again.")
    page = pages[0]
    if page.shaped[0] > 1:  # several depth planes in one page (SGI volumes)
        raise ImageError(path, "holds a volume in one page; a QC field is one 2-D image.")
    samples = page.samplesperpixel
    if samples > 1 and page.planarconfig != 1:  # separate planes inside one page
        raise ImageError(path, "stores its channels as separate planes within one page, which is not streamed. "
                               "Fix: save channels interleaved or one page per channel.")
    channels = samples * len(pages)
    if len(pages) > 1 and samples > 1:
        raise ImageError(path, f"{len(pages)} pages of {samples} samples each; a QC field is one 2-D image.")
    return sizes["Y"], sizes["X"], channels, pages


def _memmaps(path: Path, pages: list) -> list:
    out = []
    for page in pages:
        try:
            out.append(np.memmap(path, dtype=page.dtype.newbyteorder(page.parent.byteorder), mode="r",
                                 offset=page.dataoffsets[0],
                                 shape=(page.imagelength, page.imagewidth, page.samplesperpixel)))
        except (OSError, ValueError) as exc:  # shorter than its header says
            raise ImageError(path, f"its pixel data cannot be mapped ({exc}): the file is truncated. Fix: copy "
                                   "or export it again.") from None
    return out
