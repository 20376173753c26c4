"""Inputs for prediction: expand files / folders / globs, then check, decode and preprocess each one.

Decoding and preprocessing are core's ``decode_image`` and ``preprocess``: the very functions the
training data set uses, so a station sees the tensors the model was evaluated on. The checks here
only refuse an image (with a reason); they never alter one.
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np

from mscvision.core.errors import ImageError
from mscvision.core.imageio import DecodedImage, decode_image, is_image_file
from mscvision.core.preprocess import preprocess
from mscvision.runtime.metadata import ModelMetadata

_GLOB_CHARS = "*?["


def collect_inputs(items: list[str], recursive: bool = False) -> list[str]:
    """Files as given; folders → their image files (sorted; ``recursive`` descends); globs expanded.

    A name that matches nothing is kept, so that it becomes an error row rather than vanishing.
    """
    found: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found += sorted(str(p) for p in path.glob(pattern) if p.is_file() and is_image_file(p))
        elif not path.exists() and any(c in item for c in _GLOB_CHARS):
            matches = sorted(glob.glob(item, recursive=recursive))
            found += [m for m in matches if Path(m).is_file()] or [item]
        else:
            found.append(item)
    return list(dict.fromkeys(found))  # drop repeats, keep order


def load_input(path: str | Path, metadata: ModelMetadata) -> np.ndarray:
    """One image file → the model's float32 (C, h, w) input; ``ImageError`` says why not."""
    decoded = decode_image(path)
    check_input(decoded, metadata, str(path))
    return preprocess(decoded.array, metadata.spec, decoded.pixel_size_um, source=str(path))


def check_input(decoded: DecodedImage, metadata: ModelMetadata, source: str) -> None:
    """Refuse what the model was not trained for: too large (needs tiling) or the wrong bit depth.

    Channel count and the spec's own bit depth are checked inside ``preprocess``, by the same code
    that training runs.
    """
    height, width = decoded.array.shape[:2]
    spec = metadata.spec
    scale = 1.0
    if spec.pixel_size_um and decoded.pixel_size_um:
        scale = decoded.pixel_size_um / spec.pixel_size_um  # preprocess rescales to the trained pixel size
    if max(height, width) * scale > metadata.max_input_side:
        raise ImageError(f"{source}: {width}x{height} px is much larger than the images this model was trained "
                         f"on (it accepts at most {metadata.max_input_side} px a side). Whole fields need tiling, "
                         "which is not supported yet; it is never shrunk silently. Fix: crop it into fields "
                         "the size of the training images.")
    depths = metadata.training_bit_depths
    if spec.intensity == "fixed" and depths and decoded.bit_depth not in depths:
        # fixed scaling divides by the bit-depth maximum, so another depth means other intensities
        raise ImageError(f"{source}: is {decoded.bit_depth}-bit; the model was trained on "
                         f"{'/'.join(map(str, depths))}-bit images with fixed intensity scaling. "
                         "Fix: supply images of the training bit depth.")
