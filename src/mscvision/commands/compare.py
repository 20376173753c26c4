"""`mscvision compare APPROVED.onnx CANDIDATE.onnx DATA [--lot LAYOUT.csv --spec SPEC.yaml] [--out DIR]`:
the evidence for approving a new model (runtime/compare.py). Torch-free: the bare station install runs it.

Writes into DIR, each atomically: ``comparison.json`` (schema ``mscvision.comparison/1``: both
evaluations in full, the paired differences, the changed decisions counted, and ``lot_verdicts``),
``decisions_changed.csv`` (one row per image and task whose decision changed), ``predictions_approved.csv``
and ``predictions_candidate.csv`` (each model's station rows), and a self-contained ``report.html``.

With ``--lot`` and ``--spec`` (both or neither) each model also judges a reference lot through
``mscvision qc``'s own code: the lot is placed by qc's ``load_placements`` (commands/qc.py), the spec
read by ``core.qcspec.load_spec``, both models pass the station's start-up check
(``runtime.startup.station_startup``) before any image is read, the CANDIDATE with
``require_approval=False`` (not approved yet: this comparison is the evidence for approving it; qc
itself still refuses it), and ``verdicts_changed.csv`` lists every well / lot whose verdict changed with
both models' reasons. Without them no verdicts_changed.csv is written (one an earlier comparison left in
DIR is removed, so DIR never shows verdicts of another run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mscvision.core.errors import EXIT_INPUTS_FAILED, EXIT_OK

OUTPUT_FILES = ("comparison.json", "decisions_changed.csv", "predictions_approved.csv", "predictions_candidate.csv",
                "report.html", "verdicts_changed.csv")
CHANGED_COLUMNS = ("path", "group", "task", "true", "approved", "candidate", "change", "approved.p", "candidate.p",
                   "approved.reason", "candidate.reason")
VERDICT_COLUMNS = ("unit", "level", "approved", "candidate", "approved.reason", "candidate.reason")
EPILOG = """exit codes:
  0  both models scored every image and every label is a class of the models
  2  usage or data error: no such file, no task in common, an --out that holds another tool's files,
     --lot without --spec or --spec without --lot; with --lot: a bad layout or spec, or the start-up
     check refused a model (APPROVED not approved by the spec, a model failing its conformance
     vectors, a criterion naming a task or class a model lacks). Nothing is written.
  3  compared, but some images could not be read by a model or some labels are not classes (counted)
  1  an internal error (a bug: the traceback is shown)

Verdicts on a reference lot: --lot LAYOUT.csv --spec SPEC.yaml (both or neither). LAYOUT.csv is qc's
layout (path,well,lot; paths relative to the CSV), SPEC.yaml a qc spec (configs/qc/*.yaml). Each
model judges the lot with `mscvision qc`'s own code against the spec's criteria; comparison.json
"lot_verdicts" holds every well's and lot's verdict from both, and verdicts_changed.csv and the
report list the ones that changed with both models' reasons. Both models pass qc's start-up check
first (conformance vectors; APPROVED must be approved by the spec), except that the CANDIDATE is
judged although the spec does not approve it: it is not approved yet, this is the evidence for
approving it (`mscvision qc` still refuses it). No audit record is written, and the lot's verdicts
do not change the exit code."""


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    from mscvision.runtime.commands import _add_device

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("approved", metavar="APPROVED", help="the approved model (.onnx)")
    parser.add_argument("candidate", metavar="CANDIDATE", help="the candidate model (.onnx)")
    parser.add_argument("data", metavar="DATA", help="labelled images: manifest.csv, a split.csv with --split, or a "
                                                     "class-per-folder tree (as for `mscvision evaluate`)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="folder for the report (default: comparison/ beside the candidate)")
    parser.add_argument("--split", choices=("train", "val", "test", "all"),
                        help="rows of this split only (required when DATA has a split column)")
    parser.add_argument("--lot", type=Path, metavar="LAYOUT.csv",
                        help="a reference lot (qc's layout: path,well,lot) both models judge as `mscvision qc` "
                             "does; needs --spec")
    parser.add_argument("--spec", type=Path, metavar="SPEC.yaml",
                        help="the qc spec whose criteria judge the --lot (the candidate is judged without its "
                             "approval refusal); needs --lot")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = all cores)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="group-bootstrap draws")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    _add_device(parser)


def run_compare(args: argparse.Namespace) -> int:
    from mscvision.core.errors import ConfigError
    from mscvision.runtime.compare import compare_models
    from mscvision.runtime.evaluate import load_labelled_data
    from mscvision.runtime.model import load_model
    from mscvision.runtime.predict import output_lock

    if args.batch_size < 1 or args.threads < 0 or args.bootstrap < 1:
        raise ConfigError("--batch-size and --bootstrap must be >= 1 and --threads >= 0")
    if (args.lot is None) != (args.spec is None):
        given, missing = ("--lot", "--spec") if args.spec is None else ("--spec", "--lot")
        raise ConfigError(f"{given} needs {missing}: a reference lot is judged against a qc spec's criteria. Fix: "
                          "give both --lot LAYOUT.csv and --spec SPEC.yaml, or neither")
    out = args.out if args.out is not None else Path(args.candidate).parent / "comparison"
    check_out_dir(out)
    if args.lot is not None:
        approved, candidate, lot = reference_lot(args)
    else:
        approved = load_model(args.approved, args.threads, args.device)
        candidate = load_model(args.candidate, args.threads, args.device)
        lot = None
    if approved.sha256 == candidate.sha256:
        print("warning: the two files are the same model (equal SHA-256): nothing can change", file=sys.stderr)
    data = load_labelled_data(args.data, approved.metadata.tasks, args.split)
    print(f"comparing {approved.path} (sha256 {approved.sha256[:16]}…) with {candidate.path} (sha256 "
          f"{candidate.sha256[:16]}…) on {len(data.paths)} images of {data.source}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out / "comparison.json"):
        comparison = compare_models(approved, candidate, data, batch_size=args.batch_size,
                                    workers=min(4, max(1, args.threads or 2)), n_boot=args.bootstrap, seed=args.seed,
                                    lot=lot, progress=lambda line: print(line, file=sys.stderr))
        write_outputs(out, approved, comparison)
    for line in summary_lines(comparison.doc):
        print(line)
    written = [name for name in OUTPUT_FILES
               if name != "verdicts_changed.csv" or comparison.verdicts_changed is not None]
    print(f"wrote {', '.join(str(out / name) for name in written)}", file=sys.stderr)
    return EXIT_INPUTS_FAILED if comparison.problems else EXIT_OK


def reference_lot(args: argparse.Namespace):
    """(approved model, candidate model, ReferenceLot): the lot placed and the spec read as qc does, and
    qc's start-up check on each model before any image is read. The APPROVED model must be approved by
    the spec; the CANDIDATE is checked with ``require_approval=False`` (compare only: it is the model
    being considered for approval; `mscvision qc` refuses it until its entry is in the spec)."""
    from mscvision.commands.qc import load_placements
    from mscvision.core.approval import ApprovalError
    from mscvision.core.qcspec import load_spec
    from mscvision.runtime.compare import ReferenceLot, check_lot_tasks
    from mscvision.runtime.startup import station_startup

    spec = load_spec(args.spec)
    placements = load_placements(args.lot)
    checks = {}
    for side, path, required in (("approved", args.approved, True), ("candidate", args.candidate, False)):
        try:
            checks[side] = station_startup(path, spec, args.spec, spec_sha256=spec.sha256, threads=args.threads,
                                           device=args.device, require_approval=required)
        except ApprovalError as exc:
            if not required:
                raise
            raise ApprovalError(f"APPROVED must be a model the spec approves (the one a station runs today): {exc}") \
                from None
        check = checks[side]
        status = (f"approved by the spec ({check.approval.get('name')})" if check.approval is not None else
                  "NOT approved by the spec: judged anyway, for this comparison only")
        print(f"{side} {check.model.path}: {status}; {check.conformance['cases']} conformance cases agree",
              file=sys.stderr)
    check_lot_tasks(checks["approved"].model, checks["candidate"].model, spec)
    facts = {side: {"approval": c.approval, "unapproved": c.unapproved, "conformance": c.conformance}
             for side, c in checks.items()}
    return (checks["approved"].model, checks["candidate"].model,
            ReferenceLot(str(args.lot), placements, spec, facts))


def check_out_dir(out: Path) -> None:
    """Refuse an --out that is a file, or that holds files this command did not write."""
    import json

    from mscvision.core.errors import ConfigError
    from mscvision.runtime.compare import SCHEMA

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; name a folder")
    present = [name for name in OUTPUT_FILES if (out / name).exists()]
    if not present:
        return
    try:
        schema = json.loads((out / "comparison.json").read_text(encoding="utf-8")).get("schema")
    except (OSError, ValueError, AttributeError):
        schema = None
    if schema != SCHEMA:
        raise ConfigError(f"--out {out}: already holds {', '.join(present)} that a comparison did not write; they "
                          "would be replaced. Fix: name another folder.")


def write_outputs(out: Path, approved, comparison) -> None:
    from mscvision.core.fileio import write_json_atomic, write_text_atomic
    from mscvision.runtime.compare_report import changed_thumbnails, render_comparison
    from mscvision.runtime.predict import Tally, write_rows

    write_rows(comparison.approved.rows, comparison.approved.columns, out / "predictions_approved.csv", Tally())
    write_rows(comparison.candidate.rows, comparison.candidate.columns, out / "predictions_candidate.csv", Tally())
    write_changed(comparison.changed, out / "decisions_changed.csv")
    if comparison.verdicts_changed is not None:
        write_changed(comparison.verdicts_changed, out / "verdicts_changed.csv", VERDICT_COLUMNS)
    else:  # no lot judged this time: none left from an earlier comparison in DIR (check_out_dir vouched for it)
        (out / "verdicts_changed.csv").unlink(missing_ok=True)
    write_json_atomic(out / "comparison.json", comparison.doc)
    html = render_comparison(comparison.doc, comparison.changed, changed_thumbnails(comparison.changed,
                                                                                   approved.metadata))
    write_text_atomic(out / "report.html", html)


def write_changed(changed: list[dict], path: Path, columns: tuple[str, ...] = CHANGED_COLUMNS) -> None:
    """decisions_changed.csv (or verdicts_changed.csv with VERDICT_COLUMNS), with the station's cell rule
    (text a spreadsheet would run is quoted)."""
    import csv

    from mscvision.core.fileio import atomic_path
    from mscvision.runtime.predict import csv_cell

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        for row in changed:
            writer.writerow([csv_cell("" if row.get(c) is None else row[c]) for c in columns])


def summary_lines(doc: dict) -> list[str]:
    lines = [f"{'task':14} {'figure':18} {'approved':>9} {'candidate':>9} {'Δ (paired 95% CI)':>28} {'changed':>8}"]
    for name, task in doc["tasks"].items():
        a, b, paired = doc["approved"]["tasks"][name], doc["candidate"]["tasks"][name], task["paired"]
        for key in ("balanced_accuracy", "macro_f1"):
            iv = (paired["intervals"] or {}).get(key)
            ci = f"[{iv[0]:+.3f}, {iv[1]:+.3f}]" if iv else "(no interval)"
            lines.append(f"{name:14} {key:18} {a['metrics'][key]:9.3f} {b['metrics'][key]:9.3f} "
                         f"{paired['difference'][key]:+8.3f} {ci:>19} {task['decisions']['n']:8d}")
    for note in doc["notes"]:
        lines.append(f"note: {note}")
    lot = doc["lot_verdicts"]
    if lot.get("changes") is None:
        lines.append(f"verdicts on a reference lot: {lot['note']}")
        return lines
    lines.append(f"verdicts on the reference lot {lot['layout']} ({lot['n_images']} images, spec "
                 f"{lot['spec']['name']}): {lot['n_changed']} of {len(lot['units'])} wells / lots changed")
    for c in lot["changes"]:
        lines.append(f"  {c['level']} {c['unit']}: {c['approved']} -> {c['candidate']}")
    if not lot["models"]["candidate"]["approved_by_spec"]:
        lines.append("note: the candidate is not approved by the spec; compare judged it anyway (qc refuses it)")
    return lines
