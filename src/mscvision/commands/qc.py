"""`mscvision qc --spec SPEC --model MODEL INPUT... --out DIR`: the in-process check of a lot.

Before any image is read the station checks itself (runtime/startup.py: the spec's signature when it
has approver keys, the model's SHA-256 and metadata against the spec's approval entry, the model's
conformance vectors); any failure is a refusal with no verdict (exit 2). Then every field is tiled
and judged (runtime/qc.py), and DIR receives, each file atomically: ``images.csv``, ``verdicts.json``
(schema ``mscvision.qc/1``), ``overlays/*.png``, ``summary.html`` and, with ``--tiles``,
``tiles.csv``. With ``--station STATION.yaml`` the run is appended to the station's audit log
(core/audit.py) before the results are written, and its signed checkpoint is copied into DIR.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from pathlib import Path

EPILOG = """exit codes:
  0  every lot PASS            4  a well or lot FAIL            5  REVIEW (and no FAIL)
  3  no image could be read    2  usage, spec, layout or station-config error, or the station refused the
                                  model (not approved, altered, conformance vectors failed): no verdict
  6  the run could not be appended to the audit log (its verdict stands in verdicts.json, unrecorded)

A verdict is a recommendation; the release decision belongs to the quality unit.

--layout CSV: columns path,well,lot (paths relative to the CSV). --pattern REGEX: named groups
(?P<well>...) and optionally (?P<lot>...) matched against each file name. Neither: each image is its
own well of one lot.

--station STATION.yaml: station_id, key (the station's Ed25519 private key), log (the audit log),
approver_keys (public keys of the quality unit: the spec must then be signed), operator (the default
name recorded; MSCVISION_OPERATOR overrides it; not an electronic signature)."""

STATION_KEYS = {"station_id": str, "key": str, "log": str, "approver_keys": list, "operator": str}


def add_qc_arguments(parser: argparse.ArgumentParser) -> None:
    from mscvision.runtime.commands import _add_device

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--spec", required=True, type=Path, help="acceptance criteria (configs/qc/*.yaml)")
    parser.add_argument("--model", required=True, type=Path, help="the approved .onnx model")
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="whole-field images, folders or globs "
                                                                  "(optional with --layout)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the results")
    placement = parser.add_mutually_exclusive_group()
    placement.add_argument("--layout", type=Path, metavar="CSV", help="path,well,lot per image")
    placement.add_argument("--pattern", metavar="REGEX", help="well (and lot) from each file name")
    parser.add_argument("--tiles", action="store_true", help="also write tiles.csv (one row per tile)")
    parser.add_argument("--station", type=Path, metavar="STATION.yaml", help="append the run to this station's "
                                                                             "audit log (see below)")
    parser.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = all cores)")
    _add_device(parser)


def run_qc(args: argparse.Namespace) -> int:
    from mscvision.core.approval import ApprovalError  # noqa: F401  (documented refusal type)
    from mscvision.core.fileio import sha256_file
    from mscvision.core.qcspec import load_spec
    from mscvision.runtime.qc import judge_run
    from mscvision.runtime.startup import station_startup

    spec = load_spec(args.spec)
    station = load_station_config(args.station) if args.station else None
    placements = load_placements(args.layout, args.inputs, args.pattern, args.recursive)
    _check_out(args.out, [p.path for p in placements], args.model, args.spec)
    approver_keys = _approver_keys(station)
    check = station_startup(args.model, spec, args.spec, spec_sha256=spec.sha256, approver_keys=approver_keys,
                            threads=args.threads, device=args.device)
    print(f"station self-check passed: {check.model.path} is approved ({check.approval.get('name')}), "
          f"{check.conformance['cases']} conformance cases agree", file=sys.stderr)
    outcome = judge_run(check.model, placements, spec, progress=lambda line: print(line, file=sys.stderr))
    doc = verdicts_document(args, spec, check, outcome, sha256_file)
    code = doc["exit_code"]
    if station is not None:
        code = _append_audit(station, check, args, spec, outcome, doc)
    write_outputs(args.out, doc, outcome, check.model.metadata, with_tiles=args.tiles)
    for lot in doc["lots"]:
        print(f"lot {lot['name']}: {lot['verdict']}" + (f" ({'; '.join(lot['reasons'][:2])})" if lot["reasons"] else ""))
    print(f"wrote {args.out / 'summary.html'} and verdicts.json (a recommendation; the release decision belongs "
          "to the quality unit)")
    return code


def load_placements(layout: Path | None, inputs=(), pattern: str | None = None, recursive: bool = False) -> list:
    """Which well and lot each image belongs to, as qc places them: the layout CSV (any INPUTs must be in
    it), else the INPUTs by ``pattern``, else each INPUT its own well. ``mscvision compare --lot`` places
    its reference lot with this too."""
    from mscvision.core.errors import ConfigError
    from mscvision.core.qclayout import place_by_pattern, place_each_alone, read_layout
    from mscvision.runtime.inputs import collect_inputs

    if layout is not None:
        placements = read_layout(layout)
        if inputs:
            listed = {os.path.realpath(p.path) for p in placements}
            extra = [p for p in collect_inputs(inputs, recursive).paths if os.path.realpath(p) not in listed]
            if extra:
                raise ConfigError(f"{extra[0]}: given as an input but not in the layout {layout} "
                                  f"({len(extra)} such file(s)); its well is unknown. Fix: add it to the layout")
        return placements
    if not inputs:
        raise ConfigError("mscvision qc needs INPUT images or --layout CSV")
    collected = collect_inputs(inputs, recursive)
    if collected.problems:
        shown, reason = collected.problems[0]
        raise ConfigError(f"{shown}: {reason}")
    if not collected.paths:
        raise ConfigError(f"no image files in {' '.join(inputs)}")
    return place_by_pattern(collected.paths, pattern) if pattern else place_each_alone(collected.paths)


def _check_out(out: Path, inputs: list[str], *others: Path) -> None:
    from mscvision.core.errors import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    real = os.path.realpath(out)
    for p in [*inputs, *map(str, others)]:
        if os.path.realpath(os.path.dirname(os.path.abspath(p))) == real and Path(p).name in _OUTPUT_NAMES:
            raise ConfigError(f"--out {out}: would overwrite the input {p}")


_OUTPUT_NAMES = ("images.csv", "tiles.csv", "verdicts.json", "summary.html", "audit-checkpoint.txt")


# --- the station config -------------------------------------------------------------------------------

def load_station_config(path: Path) -> dict:
    """The station's own settings (YAML): ``ConfigError`` naming the key for anything wrong."""
    import yaml

    from mscvision.core.errors import ConfigError

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"--station {path}: cannot read it as YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"--station {path}: a mapping of {', '.join(STATION_KEYS)}")
    for key, value in raw.items():
        if key not in STATION_KEYS:
            raise ConfigError(f"--station {path}: {key}: unknown key (known: {', '.join(STATION_KEYS)})")
        if value is not None and not isinstance(value, STATION_KEYS[key]):
            raise ConfigError(f"--station {path}: {key}: must be a {STATION_KEYS[key].__name__}")
    for key in ("station_id", "key", "log"):
        if not raw.get(key):
            raise ConfigError(f"--station {path}: {key}: required (the station id, its private key, its audit log)")
    base = path.parent
    resolve = lambda p: str(p if os.path.isabs(p) else base / p)  # noqa: E731
    return {**raw, "key": resolve(raw["key"]), "log": resolve(raw["log"]),
            "approver_keys": [resolve(str(k)) for k in raw.get("approver_keys") or []], "path": str(path)}


def _approver_keys(station: dict | None) -> list:
    if not station or not station["approver_keys"]:
        return []
    from mscvision.core.signing import load_public_key

    return [load_public_key(p) for p in station["approver_keys"]]


# --- the results --------------------------------------------------------------------------------------

def verdicts_document(args, spec, check, outcome, sha256_file) -> dict:
    import datetime as dt

    from mscvision.core.errors import EXIT_INPUTS_FAILED
    from mscvision.core.verdicts import exit_code_for
    from mscvision.runtime.qc import image_entry

    overlays = overlay_names(outcome.placements)
    images = [image_entry(p, s, overlays[i]) for i, (p, s) in enumerate(zip(outcome.placements, outcome.scans))]
    wells = []
    for verdict, members in zip(outcome.wells, _well_members(outcome)):
        wells.append({**verdict.to_dict(), "lot": members[0].lot, "images": [m.path for m in members]})
    lots = []
    for verdict in outcome.lots:
        lots.append({**verdict.to_dict(), "wells": [w["name"] for w in wells if w["lot"] == verdict.name]})
    code = exit_code_for([*outcome.wells, *outcome.lots])
    if all(im["status"] == "error" for im in images):
        code = EXIT_INPUTS_FAILED
    return {"schema": "mscvision.qc/1",
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "recommendation_only": "PASS / FAIL / REVIEW is the station's recommendation against the spec; the "
                                   "release decision belongs to the quality unit",
            "spec": {"path": str(args.spec), "sha256": spec.sha256, "name": spec.name},
            "model": {"path": str(check.model.path), "sha256": check.model.sha256,
                      "name": check.model.metadata.raw.get("name"), "approval": check.approval},
            "unit": spec.unit, "confidence": spec.confidence,
            "unit_meaning": "fraction of usable tissue tiles (model-input sized, at the model's pixel size) whose "
                            "dominant state is the class",
            "normalisation": f"percentile scaling per tile ({check.model.metadata.spec.intensity}; the model was "
                             "trained on crops of the tile's size scaled the same way)",
            "quantification": outcome.quantification,
            "lots": lots, "wells": wells, "images": images, "audit": None, "exit_code": code}


def _well_members(outcome) -> list[list]:
    groups: dict[tuple[str, str], list] = {}
    for p in outcome.placements:
        groups.setdefault((p.lot, p.well), []).append(p)
    return list(groups.values())


def overlay_names(placements) -> list[str]:
    """``overlays/NNN_STEM.png``: numbered, so two files of one name in different folders stay apart."""
    return [f"overlays/{i:03d}_{_safe(Path(p.path).stem)}.png" for i, p in enumerate(placements)]


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80] or "image"


def write_outputs(out: Path, doc: dict, outcome, metadata, with_tiles: bool) -> None:
    from mscvision.core.fileio import write_json_atomic, write_text_atomic
    from mscvision.runtime.qc_report import render_overlay, render_summary

    (out / "overlays").mkdir(parents=True, exist_ok=True)
    tasks = [(t.name, list(t.classes)) for t in metadata.tasks]
    overlays = {}
    for entry, scan in zip(doc["images"], outcome.scans):
        render_overlay(scan, tasks, out / entry["overlay"])
        overlays[entry["path"]] = entry["overlay"]
    write_text_atomic(out / "images.csv", images_csv(doc["images"]))
    if with_tiles:
        write_text_atomic(out / "tiles.csv", tiles_csv(outcome, metadata))
    write_json_atomic(out / "verdicts.json", doc)
    render_summary(doc, out / "summary.html", overlays)


IMAGE_COLUMNS = ("path", "well", "lot", "status", "reason", "tiles", "background", "evaluated", "usable", "flagged",
                 "abstained", "errors", "pixel_size_um", "tile_px", "overlay")


def images_csv(images: list[dict]) -> str:
    from mscvision.runtime.predict import csv_cell

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(IMAGE_COLUMNS)
    for im in images:
        writer.writerow([csv_cell("" if im.get(c) is None else im.get(c)) for c in IMAGE_COLUMNS])
    return buf.getvalue()


def tiles_csv(outcome, metadata) -> str:
    from mscvision.runtime.predict import csv_cell

    task_columns = [c for t in metadata.tasks for c in (f"{t.name}.label", *(f"{t.name}.p.{k}" for k in t.classes))]
    columns = ["path", "row", "col", "y0", "x0", "y1", "x1", "foreground", "status", "flagged", "reason",
               *task_columns]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for placement, scan in zip(outcome.placements, outcome.scans):
        for tile in scan.tiles:
            b = tile.box
            cells = [placement.path, b.row, b.col, b.y0, b.x0, b.y1, b.x1, round(float(tile.foreground), 4),
                     tile.status, int(bool(tile.flagged)), tile.reason]
            for t in metadata.tasks:
                p = (tile.probabilities or {}).get(t.name)
                cells.append(tile.labels.get(t.name, ""))
                cells += [""] * len(t.classes) if p is None else [round(float(v), 6) for v in p]
            writer.writerow([csv_cell(c) for c in cells])
    return buf.getvalue()


# --- the audit trail ----------------------------------------------------------------------------------

def _append_audit(station: dict, check, args, spec, outcome, doc: dict) -> int:
    from mscvision.core.audit import append_run, file_record, operator_identity, software_versions
    from mscvision.core.errors import EXIT_AUDIT, AuditTrailBroken, MscvisionError
    from mscvision.core.fileio import write_text_atomic
    from mscvision.core.signing import load_private_key

    summary = "; ".join(f"lot {lot['name']}: {lot['verdict']}" for lot in doc["lots"])
    record = {"station_id": station["station_id"], "operator": operator_identity(station.get("operator")),
              **check.audit_fields(args.spec), "versions": software_versions(),
              "verdicts": {"lots": doc["lots"], "wells": doc["wells"]}, "summary": summary,
              "command": list(sys.argv), "exit_code": doc["exit_code"], "quantification": doc["quantification"]}
    images = []
    for entry in doc["images"]:
        try:
            identity = file_record(entry["path"])
        except OSError:
            identity = {"path": entry["path"], "sha256": None, "bytes": None}
        images.append({**identity, "status": entry["status"], "reason": entry["reason"], "well": entry["well"],
                       "lot": entry["lot"], "result": {k: entry[k] for k in
                                                       ("tiles", "background", "usable", "flagged", "abstained",
                                                        "errors")}})
    try:
        appended = append_run(station["log"], record, load_private_key(station["key"]), images=images)
    except (AuditTrailBroken, MscvisionError, OSError) as exc:
        doc["audit"] = {"recorded": False, "log": station["log"], "error": str(exc)}
        print(f"the run could not be appended to the audit log {station['log']}: {exc}", file=sys.stderr)
        return EXIT_AUDIT
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "audit-checkpoint.txt", appended.checkpoint)
    doc["audit"] = {"recorded": True, "log": station["log"], "run_id": appended.run_id,
                    "records": f"{appended.first_seq}..{appended.size - 1}", "head": appended.head,
                    "checkpoint": "audit-checkpoint.txt", "station_id": station["station_id"]}
    return doc["exit_code"]
