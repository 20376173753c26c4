"""A labelled montage of the generator's classes, for the README and for eyeballing realism.

Rows are classes: the three morphology states, then the four differentiation states. Each row's
other label varies along the row (drawn from the joint table), so a row shows what its class has
in common across the other task. Pillow draws the text; it is imported only here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mscvision.core.fileio import atomic_path
from mscvision.core.preprocess import percentile_normalize
from mscvision.synth.labels import DIFFERENTIATION_CLASSES, JOINT, MORPHOLOGY_CLASSES, build_donor
from mscvision.synth.render import render_crop

_PREVIEW_TAG = 0x5EEDF1E7
LABEL_WIDTH = 150
GAP = 4


def _rows() -> list[tuple[str, str, int]]:
    return ([("morphology", c, i) for i, c in enumerate(MORPHOLOGY_CLASSES)]
            + [("differentiation", c, i) for i, c in enumerate(DIFFERENTIATION_CLASSES)])


def _tile(seed: int, row: int, col: int, task: str, cls: int, modality: str, size: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence([seed, _PREVIEW_TAG, row, col]))
    weights = JOINT[cls] if task == "morphology" else JOINT[:, cls]
    other = int(rng.choice(len(weights), p=weights / weights.sum()))
    labels = (cls, other) if task == "morphology" else (other, cls)
    image = render_crop(rng, build_donor(seed, col), labels, size, modality, 8).image
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    nuc, actin = np.moveaxis(percentile_normalize(image[:, :, :2].astype(np.float64), 1.0, 99.8), 2, 0)
    rgb = np.stack([actin, 0.55 * actin + 0.25 * nuc, nuc], axis=-1)  # actin orange-ish, nuclei blue
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def write_preview(path, seed: int = 0, modality: str = "phase", per_row: int = 6, size: int = 128) -> Path:
    """Render the montage and write it as PNG (atomically); return the path."""
    from PIL import Image, ImageDraw

    rows = _rows()
    height = len(rows) * (size + GAP) + GAP
    width = LABEL_WIDTH + per_row * (size + GAP)
    canvas = np.full((height, width, 3), 255, np.uint8)
    for r, (task, name, cls) in enumerate(rows):
        y = GAP + r * (size + GAP)
        for c in range(per_row):
            x = LABEL_WIDTH + c * (size + GAP)
            canvas[y:y + size, x:x + size] = _tile(seed, r, c, task, cls, modality, size)
    image = Image.fromarray(canvas, "RGB")
    draw = ImageDraw.Draw(image)
    for r, (task, name, _) in enumerate(rows):
        y = GAP + r * (size + GAP) + size // 2 - 12
        draw.text((8, y), task, fill=(90, 90, 90))
        draw.text((8, y + 14), name, fill=(0, 0, 0))
    if modality == "phase":  # grey tiles and text: one channel keeps the README's PNG a third the size
        image = image.convert("L")
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
