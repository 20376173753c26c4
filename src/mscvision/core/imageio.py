"""Decode PNG / JPEG / (OME-)TIFF into one array layout: (H, W, C), dtype as stored.

Every decoder path ends in ``DecodedImage`` so that training and the runtime see the same thing.
Layout guesses (channels-first vs channels-last, pages as channels, z-projection) are recorded in
``DecodedImage.notes`` so a user can see what was assumed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mscvision.core.errors import ImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_MAX_CHANNELS = 16  # a leading/trailing axis this small is a channel axis, not a spatial one
_UM_PER_UNIT = {"cm": 1e4, "centimeter": 1e4, "inch": 25400.0, "mm": 1e3, "micron": 1.0,
                "um": 1.0, "µm": 1.0, "\\u00B5m": 1.0, "nm": 1e-3}


@dataclass(frozen=True)
class DecodedImage:
    array: np.ndarray  # (H, W, C): uint8, uint16 or float32
    bit_depth: int  # 8, 16, or 32 (float)
    pixel_size_um: float | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def channels(self) -> int:
        return self.array.shape[2]


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def decode_image(path: str | Path, z_projection: str = "max") -> DecodedImage:
    """Read one image file. Raises ``ImageError`` naming the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file. Fix: check the path (relative paths are "
                         "resolved against the manifest's folder).")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            decoded = _decode_tiff(path, z_projection)
        else:
            decoded = _decode_pillow(path)
    except ImageError:
        raise
    except Exception as exc:  # decoders raise many types; the user needs one message
        raise ImageError(f"{path}: cannot be decoded as an image ({type(exc).__name__}: {exc}). "
                         "Fix: re-export it as PNG or TIFF, or remove it from the data set.") from exc
    return _normalise_dtype(path, decoded)


def _decode_pillow(path: Path) -> DecodedImage:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        notes: list[str] = []
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


def _decode_tiff(path: Path, z_projection: str) -> DecodedImage:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        arr = series.asarray()
        axes = series.axes.upper()
        pixel_size = _ome_pixel_size(tif) or _resolution_pixel_size(tif)
    arr, notes = _to_hwc(np.asarray(arr), axes, z_projection, path)
    return DecodedImage(arr, 0, pixel_size, tuple(notes))


def _to_hwc(arr: np.ndarray, axes: str, z_projection: str, path: Path) -> tuple[np.ndarray, list[str]]:
    """Move a TIFF series with named axes to (H, W, C)."""
    notes: list[str] = []
    for axis in "T":
        if axis in axes and arr.shape[axes.index(axis)] > 1:
            raise ImageError(f"{path}: a time series ({arr.shape[axes.index(axis)]} time points) is not "
                             "one image. Fix: export each time point as its own file.")
    if "Z" in axes and arr.shape[axes.index("Z")] > 1:
        if z_projection != "max":
            raise ImageError(f"{path}: a z-stack and z_projection={z_projection!r}. Fix: project it "
                             "(maximum intensity) or set data.z_projection: max.")
        arr = arr.max(axis=axes.index("Z"))
        axes = axes.replace("Z", "")
        notes.append("z-stack reduced by maximum-intensity projection")
    for axis in "TZ":  # singleton axes
        if axis in axes:
            arr = arr.squeeze(axes.index(axis))
            axes = axes.replace(axis, "")
    if "Y" not in axes or "X" not in axes:
        raise ImageError(f"{path}: no Y/X axes in TIFF axes {axes!r}.")
    channel_axes = [i for i, a in enumerate(axes) if a not in "YX"]
    if len(channel_axes) > 1:
        raise ImageError(f"{path}: TIFF axes {axes!r} hold more than one non-spatial axis. "
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
        raise ImageError(f"{path}: {arr.shape[2]} pages is too many to be channels.")
    return arr, notes


def _ome_pixel_size(tif) -> float | None:
    if not tif.is_ome or not tif.ome_metadata:
        return None
    match = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
    if not match:
        return None
    unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
    return float(match.group(1)) * _UM_PER_UNIT.get(unit.group(1) if unit else "µm", 1.0)


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
        arr, depth = arr.astype(np.float32), 32
    elif arr.dtype == bool:
        arr, depth = arr.astype(np.uint8) * 255, 8
    else:
        raise ImageError(f"{path}: pixel type {arr.dtype} is not supported. Fix: save as 8- or "
                         "16-bit unsigned integers or 32-bit float.")
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(f"{path}: decoded to shape {arr.shape}, not a 2-D image with channels.")
    return DecodedImage(np.ascontiguousarray(arr), depth, img.pixel_size_um, img.notes)


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
