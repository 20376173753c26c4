"""Write a synthetic data set: images, ``synth.json`` and, last, ``manifest.csv``.

Every image has its own random stream, ``np.random.SeedSequence([seed, index])``, so the files
are byte-identical whatever the number of worker processes, and image i does not change when n
does (the label plan and donor of image i depend on n, though: donors are dealt round-robin).

Fractions in the manifest are **cell-area fractions**: for each state, the summed mask area of
the cells in that state that falls inside the image, divided by the summed area of all cells
inside it (overlapping cells each count their own area). ``morphology`` / ``differentiation``
are the states with the largest fraction.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
from pathlib import Path

import numpy as np

from mscvision.core.errors import ConfigError
from mscvision.core.fileio import write_json_atomic, write_text_atomic
from mscvision.core.imageio import write_image
from mscvision.synth.labels import (DIFFERENTIATION_CLASSES, MORPHOLOGY_CLASSES, donor_count, build_donor,
                                    plan_labels)
from mscvision.synth.render import MODALITIES, render_crop, render_field

GENERATOR_VERSION = "1.0"
MANIFEST = "manifest.csv"
FIELD_ZONE_PX = 512  # one Voronoi zone per ~512x512 px of a whole-well field
# Nominal pixel size of the synthetic microscope (10x objective, 6.5 um camera pixels, 2x2 binning);
# each image's magnification is jittered +-20% around it on purpose, so it is not per-image truth.
# TIFFs carry it (OME-XML also pins their channel axis); PNGs cannot.
PIXEL_SIZE_UM = 1.3


def manifest_columns() -> list[str]:
    return (["path", "morphology", "differentiation", "group"]
            + [f"morphology.fraction.{c}" for c in MORPHOLOGY_CLASSES]
            + [f"differentiation.fraction.{c}" for c in DIFFERENTIATION_CLASSES])


def _check(n: int, modality: str, bit_depth: int, size: int, workers: int, field_size: int | None) -> None:
    if n < 1:
        raise ConfigError(f"--n {n}: generate at least 1 image")
    if modality not in MODALITIES:
        raise ConfigError(f"--modality {modality!r}: use one of {MODALITIES}")
    if bit_depth not in (8, 16):
        raise ConfigError(f"--bit-depth {bit_depth}: use 8 or 16")
    if not 32 <= size <= 1024:
        raise ConfigError(f"--size {size}: use 32..1024 px (the cells are drawn at a fixed scale)")
    if field_size is not None and not 256 <= field_size <= 8192:
        raise ConfigError(f"--field-size {field_size}: use 256..8192 px")
    if workers < 1:
        raise ConfigError(f"--workers {workers}: use 1 or more")


def generate_dataset(out_dir, n: int = 2400, seed: int = 0, modality: str = "phase", bit_depth: int = 8,
                     size: int = 128, workers: int = 1, field_size: int | None = None) -> Path:
    """Generate ``n`` crops (or ``n`` whole-well fields of ``field_size`` px); return the manifest path."""
    _check(n, modality, bit_depth, size, workers, field_size)
    out = Path(out_dir)
    (out / MANIFEST).unlink(missing_ok=True)  # a folder being (re)generated must not look complete
    jobs = [(str(out), seed, i, d, m, f, size, modality, bit_depth, field_size)
            for i, (d, m, f) in enumerate(plan_labels(n, seed))]
    if workers == 1:
        rows = [render_one(job) for job in jobs]
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            rows = pool.map(render_one, jobs, chunksize=max(1, min(32, n // (4 * workers))))
    write_json_atomic(out / "synth.json", {
        "generator": "mscvision.synth", "generator_version": GENERATOR_VERSION, "seed": seed, "n": n,
        "modality": modality, "bit_depth": bit_depth, "size": size, "field_size": field_size,
        "donors": donor_count(n), "fractions": "cell-area", "nominal_pixel_size_um": PIXEL_SIZE_UM, "tasks": {
            "morphology": list(MORPHOLOGY_CLASSES), "differentiation": list(DIFFERENTIATION_CLASSES)}})
    _write_manifest(out / MANIFEST, rows)
    return out / MANIFEST


def render_one(job: tuple) -> dict:
    """Render and write image ``index``; return its manifest row. Runs in worker processes."""
    out, seed, index, donor_index, morph, diff, size, modality, bit_depth, field_size = job
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    donor = build_donor(seed, donor_index)
    if field_size:
        zones = max(2, round(field_size ** 2 / FIELD_ZONE_PX ** 2))
        result = render_field(rng, donor, field_size, modality, bit_depth, zones=zones)
        name = f"images/field_{index:05d}"
    else:
        result = render_crop(rng, donor, (morph, diff), size, modality, bit_depth)
        name = f"images/img_{index:06d}"
    rel = name + (".png" if modality == "phase" else ".tif")
    write_image(Path(out) / rel, result.image, pixel_size_um=PIXEL_SIZE_UM if rel.endswith(".tif") else None)
    row = {"path": rel, "morphology": MORPHOLOGY_CLASSES[int(np.argmax(result.morphology))],
           "differentiation": DIFFERENTIATION_CLASSES[int(np.argmax(result.differentiation))],
           "group": donor.name}
    row.update({f"morphology.fraction.{c}": f"{v:.6f}" for c, v in zip(MORPHOLOGY_CLASSES, result.morphology)})
    row.update({f"differentiation.fraction.{c}": f"{v:.6f}"
                for c, v in zip(DIFFERENTIATION_CLASSES, result.differentiation)})
    return row


def _write_manifest(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=manifest_columns(), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def read_manifest_rows(path) -> list[dict]:
    """The generated manifest's rows as dicts of strings, unchecked (scripts, tests); training reads
    data through ``core.manifest.load_dataset`` instead."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
