"""Decode PNG / JPEG / (OME-)TIFF into one array layout: (H, W, C), dtype as stored.

Every decoder path ends in ``DecodedImage`` so that training and the runtime see the same thing.
Layout guesses (channels-first vs channels-last, pages as channels, z-projection) are recorded in
``DecodedImage.notes`` so a user can see what was assumed.

A file is opened by its content (magic bytes), not its name, and its header is read and checked
(``open_image``: declared size against ``max_pixels``) before any pixel is decoded. Float pixels that
are NaN or infinite are refused here, for training and the station alike.
"""

from __future__ import annotations

import math
import re
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from mscvision.core.errors import ImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
# The most pixel values (pixels x channels x planes) one file may decode to, checked from its header
# before any pixel is decoded: 2**26 = 67,108,864 values (a 64 MP grey image, 8192 x 8192; 128 MiB as
# uint16, 256 MiB as float32). A small compressed file can declare 20000 x 20000 px; it is refused
# here, not discovered by running out of memory. Raise it per call (``max_pixels``) for real giants.
DEFAULT_MAX_PIXELS = 2**26
_MAX_CHANNELS = 16  # a leading/trailing axis this small is a channel axis, not a spatial one
_UM_PER_UNIT = {"cm": 1e4, "centimeter": 1e4, "inch": 25400.0, "mm": 1e3, "micron": 1.0,
                "um": 1.0, "µm": 1.0, "\\u00B5m": 1.0, "nm": 1e-3, "pm": 1e-6, "Å": 1e-4,
                "m": 1e6}
# Magic bytes → format: a file is decoded by what it is, not by what it is called.
_MAGIC = ((b"II*\0", "TIFF"), (b"MM\0*", "TIFF"), (b"II+\0", "TIFF"), (b"MM\0+", "TIFF"),
          (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"))
_SUFFIX_FORMAT = {".tif": "TIFF", ".tiff": "TIFF", ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
# Pillow is asked for these formats only: any other plugin (EPS runs Ghostscript, for one) is not
# something a station should run on a file it was handed.
_PILLOW_FORMATS = ("PNG", "JPEG")


@dataclass(frozen=True)
class DecodedImage:
    array: np.ndarray  # (H, W, C): uint8, uint16 or float32
    bit_depth: int  # 8, 16, or 32 (float)
    pixel_size_um: float | None = None  # as the file states it (NaN when stated but unreadable)
    notes: tuple[str, ...] = field(default=())

    @property
    def channels(self) -> int:
        return self.array.shape[2]


@dataclass(frozen=True)
class ImageHeader:
    """What a file declares, read without decoding a pixel."""

    format: str  # "TIFF", "PNG" or "JPEG"
    height: int
    width: int
    values: int  # pixel values the decoder will produce: height x width x channels x planes
    itemsize: int  # bytes per stored value
    pixel_size_um: float | None

    @property
    def decoded_bytes(self) -> int:
        return self.values * self.itemsize


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def sniff_format(path: str | Path) -> str | None:
    """"TIFF", "PNG" or "JPEG" from the file's first bytes; None when they are none of these."""
    with open(path, "rb") as f:
        head = f.read(8)
    return next((fmt for magic, fmt in _MAGIC if head.startswith(magic)), None)


def decode_image(path: str | Path, z_projection: str = "max", max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Read one image file. Raises ``ImageError`` naming the file and the fix."""
    with open_image(path, max_pixels) as reader:
        return reader.decode(z_projection)


@contextmanager
def open_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator["ImageReader"]:
    """Open one file and read its header only; ``reader.decode()`` then decodes the pixels.

    The header is checked against ``max_pixels`` here, so an oversized file never reaches a decoder;
    a caller can also weigh ``reader.header`` (e.g. against a shared memory budget) before decoding.
    """
    path = Path(path)
    if not path.is_file():
        if path.exists():  # never opened: a FIFO would block, a device never end
            raise ImageError(path, "not a regular file (a folder, device, socket or pipe). Fix: name image files.")
        raise ImageError(path, "no such file. Fix: check the path (relative paths are resolved "
                               "against the current folder, or in a manifest against the manifest's folder).")
    with ExitStack() as stack:
        with _decoder_errors(path):  # only the decoders' own errors: not those of the caller's block
            reader: ImageReader = (_TiffReader if sniff_format(path) == "TIFF" else _PillowReader)(path, stack)
        named = _SUFFIX_FORMAT.get(path.suffix.lower())
        if named and named != reader.header.format:
            reader.notes.append(f"decoded as {reader.header.format} by its content despite the {path.suffix} name")
        _check_header(path, reader.header, max_pixels)
        yield reader


@contextmanager
def _decoder_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except ImageError:
        raise
    except Exception as exc:  # decoders raise many types; the user needs one message
        raise ImageError(path, f"cannot be decoded as an image ({type(exc).__name__}: {exc}). "
                               "Fix: re-export it as PNG or TIFF, or remove it from the data set.") from exc


def _check_header(path: Path, header: ImageHeader, max_pixels: int) -> None:
    if header.values > max_pixels:
        raise ImageError(path, f"declares {header.width}x{header.height} px ({header.values:,} pixel values "
                               f"with channels and planes), more than the {max_pixels:,} this station decodes "
                               "per image; it was not decoded. Fix: crop it into fields, or raise the cap "
                               "(--max-pixels) if the file is genuine.")


class ImageReader:
    """An opened file whose header has been read; ``decode`` reads the pixels."""

    path: Path
    header: ImageHeader
    notes: list[str]

    def decode(self, z_projection: str = "max") -> DecodedImage:
        with _decoder_errors(self.path):
            decoded = self._decode(z_projection)
        return _normalise_dtype(self.path, decoded)

    def _decode(self, z_projection: str) -> DecodedImage:
        raise NotImplementedError


class _PillowReader(ImageReader):
    def __init__(self, path: Path, stack: ExitStack):
        from PIL import Image

        self.path, self.notes = path, []
        try:
            # Image.open reads the header only. Pillow's own bomb guard (a DecompressionBombError above
            # 2 x Image.MAX_IMAGE_PIXELS) is left at its default as a second line behind max_pixels.
            self.image = stack.enter_context(Image.open(path, formats=_PILLOW_FORMATS))
        except Image.DecompressionBombError as exc:
            raise ImageError(path, f"is refused by Pillow's decompression-bomb guard ({exc}); it was not "
                                   "decoded. Fix: crop it into fields.") from exc
        width, height = self.image.size
        bands = len(self.image.getbands())
        itemsize = 2 if self.image.mode.startswith("I;16") else 4 if self.image.mode in ("I", "F") else 1
        fmt = "JPEG" if self.image.format == "MPO" else self.image.format  # a camera's multi-picture JPEG
        self.header = ImageHeader(fmt, height, width, height * width * bands, itemsize, None)

    def _decode(self, z_projection: str) -> DecodedImage:
        im = self.image
        im.load()
        notes = self.notes
        if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
            notes.append(f"converted {im.mode} to RGB")
            im = im.convert("RGB")
        if im.mode in ("LA", "RGBA"):
            notes.append(f"dropped alpha of {im.mode}")
            im = im.convert(im.mode[:-1])
        arr = np.array(im)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return DecodedImage(arr, 0, None, tuple(notes))


class _TiffReader(ImageReader):
    def __init__(self, path: Path, stack: ExitStack):
        import tifffile

        self.path, self.notes = path, []
        self.tif = stack.enter_context(tifffile.TiffFile(path))  # parses the tags, not the pixel data
        self.series = self.tif.series[0]
        if len(self.tif.series) > 1:  # several fields / positions in one file: never a silent choice
            self.notes.append(f"the file holds {len(self.tif.series)} images (TIFF series); only the first, "
                              f"{'x'.join(map(str, self.series.shape))}, was read")
        axes, shape = self.series.axes.upper(), tuple(self.series.shape)
        if "Y" not in axes or "X" not in axes:
            raise ImageError(path, f"no Y/X axes in TIFF axes {axes!r}.")
        pixel_size = _ome_pixel_size(self.tif)
        if pixel_size is None:  # not `or`: a stated 0 is a value to refuse, not an absent one
            pixel_size = _resolution_pixel_size(self.tif)
        self.header = ImageHeader("TIFF", shape[axes.index("Y")], shape[axes.index("X")],
                                  int(np.prod(shape, dtype=np.int64)), self.series.dtype.itemsize, pixel_size)

    def _decode(self, z_projection: str) -> DecodedImage:
        arr, notes = _to_hwc(np.asarray(self.series.asarray()), self.series.axes.upper(), z_projection, self.path)
        return DecodedImage(arr, 0, self.header.pixel_size_um, tuple(self.notes + notes))


def _to_hwc(arr: np.ndarray, axes: str, z_projection: str, path: Path) -> tuple[np.ndarray, list[str]]:
    """Move a TIFF series with named axes to (H, W, C)."""
    notes: list[str] = []
    for axis in "T":
        if axis in axes and arr.shape[axes.index(axis)] > 1:
            raise ImageError(path, f"a time series ({arr.shape[axes.index(axis)]} time points) is not "
                                   "one image. Fix: export each time point as its own file.")
    if "Z" in axes and arr.shape[axes.index("Z")] > 1:
        if z_projection != "max":
            raise ImageError(path, f"a z-stack and z_projection={z_projection!r}. Fix: project it "
                                   "(maximum intensity) or set data.z_projection: max.")
        arr = arr.max(axis=axes.index("Z"))
        axes = axes.replace("Z", "")
        notes.append("z-stack reduced by maximum-intensity projection")
    for axis in "TZ":  # singleton axes
        if axis in axes:
            arr = arr.squeeze(axes.index(axis))
            axes = axes.replace(axis, "")
    channel_axes = [i for i, a in enumerate(axes) if a not in "YX"]
    if len(channel_axes) > 1:
        raise ImageError(path, f"TIFF axes {axes!r} hold more than one non-spatial axis. "
                                   "Fix: export one 2-D image per file, channels as the only extra axis.")
    if not channel_axes:
        arr = np.moveaxis(arr, (axes.index("Y"), axes.index("X")), (0, 1))[:, :, None]
        return arr, notes
    c_axis = channel_axes[0]
    if axes[c_axis] not in "CS":
        notes.append(f"TIFF axis {axes[c_axis]!r} (pages) read as channels")
    if axes[c_axis] in "CS" or axes[c_axis] in "IQ":
        notes.append("channels-first" if c_axis == 0 else "channels-last")
    arr = np.moveaxis(arr, (axes.index("Y"), axes.index("X"), c_axis), (0, 1, 2))
    if axes in ("QYX", "YXQ") and arr.shape[2] > _MAX_CHANNELS:
        raise ImageError(path, f"{arr.shape[2]} pages is too many to be channels.")
    return arr, notes


def _ome_pixel_size(tif) -> float | None:
    """µm per pixel from OME-XML; NaN when a size is stated but unreadable or in a unit not known,
    so that a model that rescales by it refuses the image instead of guessing."""
    if not tif.is_ome or not tif.ome_metadata:
        return None
    match = re.search(r'PhysicalSizeX="([^"]*)"', tif.ome_metadata)
    if not match:
        return None
    unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
    try:
        value = float(match.group(1))
    except ValueError:
        return math.nan
    return value * _UM_PER_UNIT.get(unit.group(1) if unit else "µm", math.nan)


def _resolution_pixel_size(tif) -> float | None:
    page = tif.pages[0]
    tag = page.tags.get("XResolution")
    if tag is None:
        return None
    num, den = tag.value
    if not num:
        return None
    unit = None
    if tif.is_imagej and tif.imagej_metadata:
        unit = tif.imagej_metadata.get("unit")
    if unit is None:
        unit_tag = page.tags.get("ResolutionUnit")
        unit = {2: "inch", 3: "cm"}.get(int(unit_tag.value) if unit_tag else 0)
    if unit not in _UM_PER_UNIT:
        return None
    return _UM_PER_UNIT[unit] * den / num


def _normalise_dtype(path: Path, img: DecodedImage) -> DecodedImage:
    arr = img.array
    if arr.dtype == np.uint8:
        depth = 8
    elif arr.dtype == np.uint16:
        depth = 16
    elif arr.dtype in (np.int32, np.int64, np.uint32, np.int16) and arr.size and 0 <= arr.min() and arr.max() <= 65535:
        arr, depth = arr.astype(np.uint16), 16
    elif arr.dtype in (np.float32, np.float64, np.float16):
        _refuse_non_finite(path, arr)  # before the cast, which would turn a finite 1e300 into "infinite"
        _refuse_beyond_float32(path, arr)
        arr, depth = arr.astype(np.float32), 32
    elif arr.dtype == bool:
        arr, depth = arr.astype(np.uint8) * 255, 8
    else:
        raise ImageError(path, f"pixel type {arr.dtype} is not supported. Fix: save as 8- or "
                                   "16-bit unsigned integers or 32-bit float.")
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(path, f"decoded to shape {arr.shape}, not a 2-D image with channels.")
    return DecodedImage(np.ascontiguousarray(arr), depth, img.pixel_size_um, img.notes)


def _refuse_non_finite(path: Path, arr: np.ndarray) -> None:
    """NaN / Inf pixels poison every statistic downstream (a NaN percentile, then a NaN tensor whose
    argmax is class 0): refuse the image, naming how many and which kind."""
    finite = np.isfinite(arr)
    if finite.all():
        return
    n_nan = int(np.isnan(arr).sum())
    n_inf = int(arr.size - finite.sum()) - n_nan
    kinds = ", ".join(f"{n:,} {kind}" for n, kind in ((n_nan, "NaN"), (n_inf, "infinite")) if n)
    raise ImageError(path, f"float image with non-finite pixel values ({kinds} of {arr.size:,}). "
                           "Fix: replace them (e.g. with 0) in the software that wrote the file, or re-export it.")


def _refuse_beyond_float32(path: Path, arr: np.ndarray) -> None:
    """float64 values that float32 cannot hold would become infinite in the model's input type."""
    if arr.dtype != np.float64 or not arr.size:
        return
    largest, limit = float(np.abs(arr).max()), float(np.finfo(np.float32).max)
    if largest > limit:
        raise ImageError(path, f"float64 pixel values up to {largest:g}, beyond float32's range "
                               f"({limit:g}), which the model computes in. Fix: save the "
                               "image with values in a sane range (e.g. 0-1 float, or 8/16-bit integers).")


def write_image(path: str | Path, array: np.ndarray, pixel_size_um: float | None = None) -> None:
    """Write (H, W) or (H, W, C) uint8/uint16 as PNG (1 or 3 channels) or TIFF (any), atomically."""
    from mscvision.core.fileio import atomic_path

    path = Path(path)
    arr = array if array.ndim == 3 else array[:, :, None]
    with atomic_path(path) as tmp:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            # OME-XML names the channel axis (a bare (H, W, 2) TIFF reads back as H pages) and is the
            # one pixel-size record every reader agrees on.
            metadata: dict = {"axes": "CYX" if arr.shape[2] > 1 else "YX"}
            if pixel_size_um:
                metadata.update(PhysicalSizeX=pixel_size_um, PhysicalSizeY=pixel_size_um)
            data = np.moveaxis(arr, 2, 0) if arr.shape[2] > 1 else arr[:, :, 0]
            tifffile.imwrite(tmp, np.ascontiguousarray(data), photometric="minisblack", ome=True, metadata=metadata)
        else:
            _write_pillow(tmp, arr, path.suffix.lower())


def _write_pillow(tmp: Path, arr: np.ndarray, suffix: str) -> None:
    from PIL import Image

    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}[suffix]
    if arr.shape[2] == 1:
        im = Image.fromarray(arr[:, :, 0]) if arr.dtype == np.uint8 else Image.fromarray(arr[:, :, 0].astype(np.uint16))
    elif arr.shape[2] == 3 and arr.dtype == np.uint8:
        im = Image.fromarray(arr, "RGB")
    else:
        raise ValueError(f"{suffix} holds 1 channel (8/16-bit) or 3 channels (8-bit); use .tif for {arr.shape[2]}")
    im.save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def write_tiled_tiff(path: str | Path, array: np.ndarray, pixel_size_um: float | None, tile: int = 256,
                     compression: str = "zlib") -> None:
    """Write one grey (H, W) or (H, W, 1) uint8/uint16 image as a tiled, compressed TIFF, atomically.

    The layout of a stitched whole-well field: a reader fetches the tiles a window needs instead of
    decoding the file. The pixel size goes into the TIFF resolution tags (pixels per cm), which
    ``decode_image`` reads back; not OME-XML, whose random UUID would make two writes of the same
    pixels differ byte for byte. ``pixel_size_um=None`` writes none (a field of unknown scale).
    """
    from mscvision.core.fileio import atomic_path

    arr = array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array
    if arr.ndim != 2 or arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_tiled_tiff takes one grey uint8/uint16 image, not {array.dtype} {array.shape}")
    if tile < 16 or tile % 16:
        raise ValueError(f"tile {tile}: TIFF tiles are a multiple of 16 px")
    if pixel_size_um is not None and not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise ValueError(f"pixel_size_um {pixel_size_um}: give a positive size or None")
    import tifffile

    extra: dict = {}
    if pixel_size_um is not None:
        per_cm = 1e4 / pixel_size_um
        extra = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
    with atomic_path(Path(path)) as tmp:
        tifffile.imwrite(tmp, np.ascontiguousarray(arr), photometric="minisblack", tile=(tile, tile),
                         compression=compression, metadata=None, **extra)
