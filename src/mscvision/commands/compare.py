"""`mscvision compare APPROVED.onnx CANDIDATE.onnx DATA [--out DIR]`: the evidence for approving a
new model (runtime/compare.py). Torch-free: the bare station install runs it.

Writes into DIR, each atomically: ``comparison.json`` (schema ``mscvision.comparison/1``: both
evaluations in full, the paired differences, the changed decisions counted), ``decisions_changed.csv``
(one row per image and task whose decision changed), ``predictions_approved.csv`` and
``predictions_candidate.csv`` (each model's station rows), and a self-contained ``report.html``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mscvision.core.errors import EXIT_INPUTS_FAILED, EXIT_OK

OUTPUT_FILES = ("comparison.json", "decisions_changed.csv", "predictions_approved.csv", "predictions_candidate.csv",
                "report.html")
CHANGED_COLUMNS = ("path", "group", "task", "true", "approved", "candidate", "change", "approved.p", "candidate.p",
                   "approved.reason", "candidate.reason")
EPILOG = """exit codes:
  0  both models scored every image and every label is a class of the models
  2  usage or data error: no such file, no task in common, an --out that holds another tool's files
  3  compared, but some images could not be read by a model or some labels are not classes (counted)
  1  an internal error (a bug: the traceback is shown)

Verdicts on a reference lot (--lot, --spec) come with `mscvision qc` (issue 17); not in this build yet."""


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
    out = args.out if args.out is not None else Path(args.candidate).parent / "comparison"
    check_out_dir(out)
    approved = load_model(args.approved, args.threads, args.device)
    candidate = load_model(args.candidate, args.threads, args.device)
    if approved.sha256 == candidate.sha256:
        print("warning: the two files are the same model (equal SHA-256): nothing can change", file=sys.stderr)
    data = load_labelled_data(args.data, approved.metadata.tasks, args.split)
    print(f"comparing {approved.path} (sha256 {approved.sha256[:16]}…) with {candidate.path} (sha256 "
          f"{candidate.sha256[:16]}…) on {len(data.paths)} images of {data.source}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out / "comparison.json"):
        comparison = compare_models(approved, candidate, data, batch_size=args.batch_size,
                                    workers=min(4, max(1, args.threads or 2)), n_boot=args.bootstrap, seed=args.seed)
        write_outputs(out, approved, comparison)
    for line in summary_lines(comparison.doc):
        print(line)
    print(f"wrote {', '.join(str(out / name) for name in OUTPUT_FILES)}", file=sys.stderr)
    return EXIT_INPUTS_FAILED if comparison.problems else EXIT_OK


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
    write_json_atomic(out / "comparison.json", comparison.doc)
    html = render_comparison(comparison.doc, comparison.changed, changed_thumbnails(comparison.changed,
                                                                                   approved.metadata))
    write_text_atomic(out / "report.html", html)


def write_changed(changed: list[dict], path: Path) -> None:
    """decisions_changed.csv, with the station's cell rule (text a spreadsheet would run is quoted)."""
    import csv

    from mscvision.core.fileio import atomic_path
    from mscvision.runtime.predict import csv_cell

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CHANGED_COLUMNS)
        for row in changed:
            writer.writerow([csv_cell("" if row.get(c) is None else row[c]) for c in CHANGED_COLUMNS])


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
    lines.append(f"verdicts on a reference lot: {doc['lot_verdicts']['note']}")
    return lines
