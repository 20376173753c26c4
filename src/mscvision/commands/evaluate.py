"""`mscvision evaluate MODEL DATA [--out DIR]`: the evidence a quality unit judges a model from.

Runs the exported model on labelled images exactly as a station does and writes, into DIR:
``metrics.json`` (schema ``mscvision.evaluation/1``), ``predictions.csv`` (the station's rows plus
the true labels and the group) and a self-contained ``report.html``; each file atomically. With
``--ood NAME=PATH`` (repeatable) the OOD gate is also measured against each source
(runtime/ood_evaluation.py): metrics.json's ``"ood"`` block and the report's OOD section.

The bare station install runs it (no torch, no matplotlib). Given a run directory or a checkpoint
instead of a .onnx file (training install), it evaluates the run's exported ``model.onnx`` the same
way and adds Grad-CAM overlays computed on the checkpoint; only then is the training layer imported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mscvision.core.errors import EXIT_INPUTS_FAILED, EXIT_OK

OUTPUT_FILES = ("metrics.json", "predictions.csv", "report.html")
EPILOG = """exit codes:
  0  every image was read and every label is a class of the model
  2  usage or data error: no such file, a DATA with none of the model's tasks, --task naming a task the
     model does not have, a CSV with a split column but no --split, an --out that is a file or holds
     another tool's metrics.json
  3  evaluated, but some images could not be read (error rows) or some labels are not classes of the
     model (counted in the report and left out of that task's figures)
  1  an internal error (a bug: the traceback is shown)

DATA: a manifest.csv (or a folder holding one) with a column per task named like the model's tasks
(a one-task model also reads a `label` column) and a `group` column; a run's split.csv with
--split test; or a class-per-folder tree (one task). DATA is the in-distribution data of the OOD figures.

--ood NAME=PATH: PATH a folder of images (unlabelled) or a manifest.csv (labelled when it has the task
columns: its accuracy is reported beside the gate's flag rate); scripts/ood_sources.py writes the
sources of issue 16."""


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    # the station's option helpers, so that --device and --expect-sha256 mean what they mean for predict
    from mscvision.runtime.commands import _add_device, _add_expect_sha256

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("model", metavar="MODEL",
                        help="an exported .onnx model; or (training install) a run directory or .ckpt: its "
                             "model.onnx is evaluated and Grad-CAM overlays from the checkpoint are added")
    parser.add_argument("data", metavar="DATA", help="manifest.csv, a run's split.csv, or a class-per-folder tree")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="folder to write metrics.json, predictions.csv, report.html into (default: "
                             "evaluation/ beside the model: the evidence stays with the model it judges, and data "
                             "folders are often read-only shares); files of an earlier evaluation there are replaced")
    parser.add_argument("--split", choices=("train", "val", "test", "all"),
                        help="rows of this split only (required when DATA has a split column, e.g. split.csv)")
    parser.add_argument("--task", action="append", metavar="NAME", help="evaluate only this task (repeatable)")
    parser.add_argument("--ood", action="append", metavar="NAME=PATH", default=[],
                        help="an out-of-distribution source to measure the OOD gate on: a folder of images or a "
                             "manifest (repeatable)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = all cores)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="group-bootstrap draws")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the Grad-CAM sample")
    parser.add_argument("--errors", type=int, default=16, metavar="N", help="most confident errors shown per task")
    parser.add_argument("--gradcam", type=int, default=3, metavar="N",
                        help="with a run or checkpoint: overlays per class for correct and for wrong predictions")
    _add_device(parser)
    _add_expect_sha256(parser)


def run_evaluate(args: argparse.Namespace) -> int:
    from mscvision.core.errors import ConfigError
    from mscvision.runtime.evaluate import evaluate_model, load_labelled_data
    from mscvision.runtime.model import load_model
    from mscvision.runtime.predict import output_lock

    if args.batch_size < 1 or args.threads < 0 or args.bootstrap < 1 or args.errors < 0 or args.gradcam < 0:
        raise ConfigError("--batch-size and --bootstrap must be >= 1; --threads, --errors and --gradcam >= 0")
    onnx_path, run = model_and_run(Path(args.model))
    out = args.out if args.out is not None else onnx_path.parent / "evaluation"
    check_out_dir(out)
    model = load_model(onnx_path, args.threads, args.device, expect_sha256=args.expect_sha256)
    tasks = chosen_tasks(model, args.task)
    data = load_labelled_data(args.data, tasks, args.split)
    sources = ood_sources(args.ood, tasks)  # before the work: a bad --ood is refused at once
    print(f"evaluating {onnx_path} (sha256 {model.sha256[:16]}…) on {len(data.paths)} images of {data.source} "
          f"({', '.join(data.labels)}) on {', '.join(model.providers)}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out / "metrics.json"):  # a second evaluation into the same folder is refused
        evaluation = evaluate_model(model, data, batch_size=args.batch_size, workers=min(4, max(1, args.threads or 2)),
                                    n_boot=args.bootstrap, seed=args.seed, n_errors=args.errors)
        extra = [ood(model, evaluation, data, sources, args)]
        if want_gradcam(run, args.gradcam):
            extra.append(gradcam(run, model, evaluation, args.gradcam, args.seed))
        write_outputs(out, model, evaluation, extra)
    for line in summary_lines(evaluation.metrics) + ood_summary_lines(evaluation.metrics["ood"]):
        print(line)
    print(f"wrote {', '.join(str(out / name) for name in OUTPUT_FILES)}", file=sys.stderr)
    return EXIT_INPUTS_FAILED if evaluation.problems else EXIT_OK


def model_and_run(target: Path):
    """(the .onnx file to evaluate, the run's files when a run directory or checkpoint was given)."""
    from mscvision.core.errors import ConfigError

    if target.suffix == ".onnx" or (target.is_file() and target.suffix != ".ckpt"):
        return target, None
    from mscvision.training.run_files import locate_run  # the training install: torch is needed from here on

    run = locate_run(target)
    onnx_path = run.run_dir / "model.onnx"
    if not onnx_path.is_file():
        raise ConfigError(f"{target}: the run has no exported {onnx_path.name}; evaluate judges the exported model a "
                          f"station runs. Fix: `mscvision export {run.run_dir}` first.")
    return onnx_path, run


def check_out_dir(out: Path) -> None:
    """Refuse an --out that is not a folder, or whose files are not an earlier evaluation's: a training
    run's folder has its own metrics.json, which must never be replaced by this one."""
    import json

    from mscvision.core.errors import ConfigError
    from mscvision.runtime.evaluate import SCHEMA

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; --out names the folder to write {', '.join(OUTPUT_FILES)} into. "
                          "Fix: name a new or existing folder.")
    present = [name for name in OUTPUT_FILES if (out / name).exists()]
    if not present:
        return
    try:
        schema = json.loads((out / "metrics.json").read_text(encoding="utf-8")).get("schema")
    except (OSError, ValueError, AttributeError):
        schema = None
    if schema != SCHEMA:
        raise ConfigError(f"--out {out}: already holds {', '.join(present)} that an evaluation did not write (a "
                          "training run's folder?); they would be replaced. Fix: name another folder, e.g. "
                          f"{out / 'evaluation'}.")


def chosen_tasks(model, names: list[str] | None):
    from mscvision.core.errors import ConfigError

    if not names:
        return model.metadata.tasks
    known = {t.name: t for t in model.metadata.tasks}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"--task {', '.join(unknown)}: {model.path} has no such task; its tasks are "
                          f"{', '.join(known)}. Fix: name one of them.")
    return tuple(known[n] for n in dict.fromkeys(names))


def ood_sources(items: list[str], tasks) -> list:
    """``--ood NAME=PATH`` values → loaded sources; a malformed, repeated or missing one is a usage error."""
    from mscvision.core.errors import ConfigError
    from mscvision.runtime.ood_evaluation import load_ood_source

    sources, seen = [], set()
    for item in items:
        name, sep, path = item.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise ConfigError(f"--ood {item!r}: expected NAME=PATH, e.g. --ood blur2=ood/blur2. Fix: name the source.")
        if name in seen:
            raise ConfigError(f"--ood {name}: given twice. Fix: give each source its own name.")
        seen.add(name)
        sources.append(load_ood_source(name, path, tasks))
    return sources


def ood(model, evaluation, data, sources, args):
    """metrics.json's "ood" block (into ``evaluation.metrics``) and the report's OOD section."""
    from mscvision.runtime.inputs import decode_budget
    from mscvision.runtime.ood_evaluation import ood_figures, source_rows
    from mscvision.runtime.report_ood import ood_section

    workers = min(4, max(1, args.threads or 2))
    scored = []
    for source in sources:
        print(f"OOD source {source.name}: {len(source.paths)} images of {source.path}", file=sys.stderr)
        scored.append((source, source_rows(model, source, args.batch_size, workers, decode_budget())))
    evaluation.metrics["ood"] = ood_figures(model, evaluation.rows, data.labels, scored)
    return ood_section(evaluation.metrics["ood"])


def ood_summary_lines(block: dict) -> list[str]:
    from mscvision.runtime.ood_evaluation import COMBINED, FPR_KEY

    if not block["gate"]:
        return [f"OOD: {block['note']}"]
    rate = block["in_distribution"]["flag_rate"][COMBINED]
    by_value: dict[str, list[str]] = {}  # the ceilings, each named by the scores that share it
    for name, value in block["in_distribution"]["combined_auroc_ceiling"].items():
        by_value.setdefault("-" if value is None else f"{value:.3f}", []).append(name)
    ceilings = "; ".join(f"{value} ({', '.join(names)})" for value, names in by_value.items())
    lines = [f"OOD gate (alpha {block['gate']['alpha']:g}): {'-' if rate is None else f'{rate:.1%}'} of the evaluated "
             f"data flagged; combined AUROC at most {ceilings} for a source only that score catches"]
    if block["sources"]:
        lines.append(f"{'OOD source':18} {'n':>6} {'AUROC':>6} {'FPR95':>6} {'flagged':>8}  balanced accuracy "
                     "(drop from the evaluated data)")
    for name, s in block["sources"].items():
        c = s["scores"][COMBINED]

        def show(value, fmt):
            return "-" if value is None else format(value, fmt)

        accuracy = "; ".join(f"{task} {a['balanced_accuracy']:.3f} (drop {show(a.get('balanced_accuracy_drop'), '.3f')})"
                             for task, a in (s["accuracy"] or {}).items() if a and a["balanced_accuracy"] is not None)
        lines.append(f"{name:18} {s['n']:6d} {show(c['auroc'], '.3f'):>6} {show(c[FPR_KEY], '.3f'):>6} "
                     f"{show(c['flag_rate'], '.1%'):>8}  {accuracy or '-'}")
    return lines


def want_gradcam(run, per_class: int) -> bool:
    """Grad-CAM for a run or checkpoint, when the training install is there; without it, say so and go on."""
    import importlib.util

    if run is None or not per_class:
        return False
    if importlib.util.find_spec("torch") is None:
        print("warning: Grad-CAM overlays need the training install (pip install 'mscvision[train]'); the report "
              "has none", file=sys.stderr)
        return False
    return True


def gradcam(run, model, evaluation, per_class: int, seed: int):
    from mscvision.core.fileio import sha256_file
    from mscvision.runtime.report import gradcam_section
    from mscvision.training.gradcam import overlay_samples

    exported_from = (model.metadata.raw.get("provenance") or {}).get("checkpoint_sha256")
    same = exported_from == sha256_file(run.checkpoint)
    samples, layer = overlay_samples(run.checkpoint, model.metadata, evaluation.rows, list(evaluation.metrics["tasks"]),
                                     per_class, seed)
    note = (f"Computed on {run.checkpoint.name} (the weights evaluated and exported), at {layer}. "
            + ("It is the checkpoint this model was exported from (SHA-256 matches)." if same else
               "WARNING: it is NOT the checkpoint this model was exported from (SHA-256 differs from the model's "
               "provenance): the overlays may not explain this model."))
    return gradcam_section(samples, note)


def write_outputs(out: Path, model, evaluation, extra_sections) -> None:
    """predictions.csv through the station's writer (same cell rules), then metrics.json, then report.html."""
    from mscvision.core.fileio import write_json_atomic, write_text_atomic
    from mscvision.runtime.predict import Tally, write_rows
    from mscvision.runtime.report import error_thumbnails, render_report

    write_rows(evaluation.rows, evaluation.columns, out / "predictions.csv", Tally())
    write_json_atomic(out / "metrics.json", evaluation.metrics)
    html = render_report(evaluation.metrics, error_thumbnails(evaluation.metrics, model.metadata), extra_sections)
    write_text_atomic(out / "report.html", html)


def summary_lines(metrics: dict) -> list[str]:
    def ci(task: dict, key: str) -> str:
        interval = (task["intervals"]["intervals"] or {}).get(key)
        return f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""

    lines = [f"{'task':18} {'n':>6} {'bal.acc (95% CI, groups)':>28} {'macroF1':>8} {'ECE':>6} {'coverage':>8} "
             f"{'sel.acc':>7}"]
    for name, task in metrics["tasks"].items():
        # what the station labelled (threshold, OOD gate and input doubts together), not the threshold alone
        m, station, cal = task["metrics"], task["abstention"]["station"], task["calibration"]["after"]
        ab = {"coverage": station["labelled"] / station["n"] if station["n"] else 0.0,
              "selective_accuracy": station["selective_accuracy"]}
        sel = "-" if ab["selective_accuracy"] is None else f"{ab['selective_accuracy']:.3f}"
        ece = "-" if not cal or cal["ece"] is None else f"{cal['ece']:.3f}"
        lines.append(f"{name:18} {m['n']:6d} {m['balanced_accuracy']:.3f}{ci(task, 'balanced_accuracy'):>22} "
                     f"{m['macro_f1']:8.3f} {ece:>6} {ab['coverage']:8.1%} {sel:>7}")
        if task["unknown_labels"]["n"]:
            lines.append(f"  warning: {task['unknown_labels']['n']} row(s) with labels that are not classes of "
                         f"{name}: {dict(task['unknown_labels']['labels'])} (left out)")
    if metrics["errors"]:
        lines.append(f"warning: {len(metrics['errors'])} image(s) could not be read (error rows in predictions.csv)")
    return lines
