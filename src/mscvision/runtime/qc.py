"""One QC run without the command line: scan each field into tiles, gather them per well and lot,
and judge each against the spec (docs/architecture.md "The QC check").

``scan_field`` (runtime/tiles.py) turns an image into tile results through the station's own
preprocessing, OOD gate and abstention; ``unit_tiles`` gathers the tiles of a well or a lot into
what ``core.verdicts.judge`` reads: the calibrated probabilities of the usable tiles (decoded, model
run, not flagged), their cluster ids (spatial blocks of ``tiling.block_tiles`` tiles a side within
each image: neighbouring tiles share a colony, so they are not independent), and the counts that
quality criteria read. A tile that is not usable is counted under its reason, never put in a class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mscvision.core.errors import ConfigError
from mscvision.core.fileio import sha256_file
from mscvision.core.qclayout import Placement
from mscvision.core.qcspec import QcSpec, spec_problems_for_model
from mscvision.core.quantify import load_quantification
from mscvision.core.tiling import block_of
from mscvision.core.verdicts import UnitTiles, Verdict, judge, judge_lot
from mscvision.runtime.metadata import ModelMetadata
from mscvision.runtime.model import Model
from mscvision.runtime.tiles import FieldScan, scan_field

COUNT_KEYS = ("tiles", "background", "evaluated", "usable", "flagged", "abstained", "errors")


@dataclass
class QcOutcome:
    placements: list[Placement]
    scans: list[FieldScan]
    wells: list[Verdict]
    lots: list[Verdict]
    quantification: dict = field(default_factory=dict)  # where each task's correction came from


def task_table(metadata: ModelMetadata, spec: QcSpec) -> tuple[dict, dict]:
    """``{task: (classes, quantification or None)}`` for the verdicts, and where each came from.

    ``ConfigError`` naming the criterion when the spec names a task or class the model lacks."""
    classes = {t.name: list(t.classes) for t in metadata.tasks}
    problems = spec_problems_for_model(spec, classes)
    if problems:
        raise ConfigError(f"{spec.path}: " + "; ".join(problems))
    if spec.quantification == "model":
        by_task = {t["name"]: t.get("quantification") for t in metadata.raw.get("tasks", [])}
        source = {"source": "model metadata (val confusions)"}
    else:
        path = Path(spec.quantification)
        by_task = load_quantification(path, classes)  # checked against the model's tasks and classes
        source = {"source": str(path), "sha256": sha256_file(path)}
    table = {name: (cls, by_task.get(name)) for name, cls in classes.items()}
    source["tasks"] = {name: ("adjusted" if q else "unadjusted: no quantification data for this task")
                       for name, (_, q) in table.items()}
    return table, source


def scan_all(model: Model, placements: Sequence[Placement], spec: QcSpec,
             progress: Callable[[str], None] | None = None) -> list[FieldScan]:
    scans = []
    for i, placement in enumerate(placements):
        scan = scan_field(model, placement.path, overlap_px=spec.tiling.overlap_px,
                          min_foreground=spec.tiling.min_foreground, declared_pixel_size_um=spec.pixel_size_um)
        scans.append(scan)
        if progress is not None:
            progress(f"image {i + 1}/{len(placements)} {placement.path}: {image_line(scan)}")
    return scans


def image_line(scan: FieldScan) -> str:
    counts = scan_counts(scan)
    if scan.error:
        return f"error: {scan.error}"
    return (f"{counts['tiles']} tiles: {counts['usable']} usable, {counts['background']} background, "
            f"{counts['flagged']} flagged, {counts['abstained']} abstained")


def judge_run(model: Model, placements: Sequence[Placement], spec: QcSpec,
              progress: Callable[[str], None] | None = None) -> QcOutcome:
    tasks, source = task_table(model.metadata, spec)
    scans = scan_all(model, placements, spec, progress)
    wells, lots = judge_scans(placements, scans, spec, tasks)
    return QcOutcome(list(placements), scans, wells, lots, source)


def judge_scans(placements: Sequence[Placement], scans: Sequence[FieldScan], spec: QcSpec,
                tasks: dict) -> tuple[list[Verdict], list[Verdict]]:
    """Verdicts per well (in first-seen order), then per lot: the lot pools its wells' tiles."""
    by_well: dict[tuple[str, str], list[int]] = {}
    for i, p in enumerate(placements):
        by_well.setdefault((p.lot, p.well), []).append(i)
    wells, lot_wells = [], {}
    for (lot, well), members in by_well.items():
        verdict = judge(unit_tiles(well, "well", [scans[i] for i in members], tasks, spec.tiling.block_tiles),
                        spec, tasks)
        wells.append(verdict)
        lot_wells.setdefault(lot, []).append((verdict, members))
    lots = []
    for lot, entries in lot_wells.items():
        members = [i for _, m in entries for i in m]
        unit = unit_tiles(lot, "lot", [scans[i] for i in members], tasks, spec.tiling.block_tiles)
        lots.append(judge_lot(unit, [v for v, _ in entries], spec, tasks))
    return wells, lots


def unit_tiles(name: str, level: str, scans: Sequence[FieldScan], tasks: dict, block_tiles: int) -> UnitTiles:
    """The usable tiles of these images, their clusters, the counts and the image problems."""
    counts = dict.fromkeys(COUNT_KEYS, 0)
    problems: list[str] = []
    probs: dict[str, list] = {t: [] for t in tasks}
    labels: dict[str, list] = {t: [] for t in tasks}
    clusters: list[int] = []
    cluster_ids: dict[tuple, int] = {}
    for k, scan in enumerate(scans):
        for key, n in scan_counts(scan).items():
            counts[key] += n
        problems += image_problems(scan)
        for tile in scan.tiles:
            if not usable(tile):
                continue
            block = (k, *block_of(tile.box, block_tiles))
            clusters.append(cluster_ids.setdefault(block, len(cluster_ids)))
            for task, (classes, _) in tasks.items():
                probs[task].append(tile.probabilities[task])
                label = tile.labels.get(task, "")
                labels[task].append(classes.index(label) if label in classes else -1)
    return UnitTiles(name=name, level=level, images=[s.path for s in scans], counts=counts, problems=problems,
                     probabilities={t: np.asarray(v, dtype=np.float64).reshape(len(v), len(tasks[t][0]))
                                    for t, v in probs.items()},
                     labels={t: np.asarray(v, dtype=np.int64) for t, v in labels.items()},
                     clusters=np.asarray(clusters, dtype=np.int64))


def usable(tile) -> bool:
    """Decoded, run through the model and not flagged by the OOD gate: its probabilities may be used."""
    return tile.status in ("ok", "review") and not tile.flagged and tile.probabilities is not None


def scan_counts(scan: FieldScan) -> dict[str, int]:
    counts = dict.fromkeys(COUNT_KEYS, 0)
    for tile in scan.tiles:
        counts["tiles"] += 1
        if tile.status == "background":
            counts["background"] += 1
            continue
        if tile.status == "error":
            counts["errors"] += 1
            continue
        counts["evaluated"] += 1
        if tile.flagged:
            counts["flagged"] += 1
        elif usable(tile):
            counts["usable"] += 1
            if any(tile.abstained.values()):
                counts["abstained"] += 1
    return counts


def image_problems(scan: FieldScan) -> list[str]:
    """Why no verdict may rest on this image: it could not be (fully) read, or it is doubted."""
    out = [f"{scan.path}: could not be read: {scan.error}"] if scan.error else []
    return out + [f"{scan.path}: {d}" for d in scan.doubts]


def image_entry(placement: Placement, scan: FieldScan, overlay: str | None) -> dict:
    problems = image_problems(scan)
    status = "error" if scan.error else ("review" if problems else "ok")
    return {"path": placement.path, "well": placement.well, "lot": placement.lot, "status": status,
            "reason": "; ".join(problems), "overlay": overlay, "pixel_size_um": scan.pixel_size_um,
            "tile_px": scan.tile_px, "notes": list(scan.notes), **scan_counts(scan)}
