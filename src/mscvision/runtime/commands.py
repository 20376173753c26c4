"""The station's subcommands: `predict`, `info`, `verify`. Arguments here import nothing heavy;
each handler imports onnxruntime (through the runtime modules) only when it runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mscvision.core.errors import EXIT_INPUTS_FAILED, EXIT_OK, EXIT_USAGE


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an exported .onnx model")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or globs")
    parser.add_argument("--out", type=Path, help="FILE.csv or FILE.jsonl (default: CSV on stdout); written "
                                                 "atomically, refused if it is the model, an input or not a file")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = all cores)")
    parser.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    _add_device(parser)
    _add_expect_sha256(parser)
    # the default lives in runtime.inputs, which imports numpy: resolved when the command runs
    parser.add_argument("--max-pixels", type=int, default=None, metavar="N",
                        help="decode cap, checked from each file's header before decoding and held in total "
                             "across decode threads (default: the runtime's DEFAULT_MAX_PIXELS, printed at start)")


def _sha256_argument(text: str) -> str:
    """argparse ``type=``: the one SHA-256 rule (``runtime.model.normalise_sha256``), as a usage error."""
    from mscvision.core.errors import ConfigError
    from mscvision.runtime.model import normalise_sha256  # numpy: imported only when the option is given

    try:
        return normalise_sha256(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an exported .onnx model")
    parser.add_argument("--json", action="store_true", help="print the raw metadata JSON")
    _add_expect_sha256(parser)


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an exported .onnx model")
    parser.add_argument("vectors", nargs="?", type=Path, help="its vectors folder (default: MODEL's NAME.vectors)")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = all cores)")
    _add_device(parser)
    _add_expect_sha256(parser)


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                        help="auto: CUDA/TensorRT where onnxruntime-gpu offers them, else CPU")


def _add_expect_sha256(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--expect-sha256", type=_sha256_argument, metavar="HEX",
                        help="refuse the model unless the SHA-256 of its file is HEX (the approved model's)")


def run_predict(args: argparse.Namespace) -> int:
    import contextlib
    import itertools

    from mscvision.runtime.model import load_model
    from mscvision.runtime.inputs import DEFAULT_MAX_PIXELS, collect_inputs, decode_budget
    from mscvision.runtime.predict import (Tally, check_not_an_input, check_output_path, error_row, output_lock,
                                           predict_files, prediction_columns, sigterm_cleans_up, write_rows)

    max_pixels = DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels
    if args.batch_size < 1 or args.threads < 0 or max_pixels < 1:
        print("error: --batch-size and --max-pixels must be >= 1 and --threads >= 0", file=sys.stderr)
        return EXIT_USAGE
    if args.out is not None:
        check_output_path(args.out, args.model)  # before anything slow: a typo costs no work
    collected = collect_inputs(args.inputs, args.recursive)
    if collected.ignored:
        print("warning: ignored " + ", ".join(f"{n} {why}" for why, n in collected.ignored.items()), file=sys.stderr)
    if not collected.paths and not collected.problems:
        print(f"error: no image files found in {args.inputs}", file=sys.stderr)
        return EXIT_USAGE
    with contextlib.ExitStack() as held:
        if args.out is not None:
            check_not_an_input(args.out, collected.paths)
            held.enter_context(output_lock(args.out))
        held.enter_context(sigterm_cleans_up())
        model = load_model(args.model, args.threads, args.device, expect_sha256=args.expect_sha256)
        print(f"model {model.path.name} ({model.metadata.precision}, sha256 {model.sha256[:16]}…) on "
              f"{', '.join(model.providers)}; {len(collected.paths)} input(s), "
              f"{len(collected.problems)} unusable; decode cap {max_pixels} px", file=sys.stderr)
        for path, problem in collected.problems:
            print(f"warning: {path}: {problem}", file=sys.stderr)
        for line in station_warnings(model.metadata):
            print(line, file=sys.stderr)
        tally = Tally()
        problem_rows = (error_row(path, problem, model.metadata) for path, problem in collected.problems)
        rows = predict_files(model, collected.paths, args.batch_size, workers=min(4, max(1, args.threads or 2)),
                             budget=decode_budget(max_pixels), max_pixels=max_pixels)
        try:
            write_rows(itertools.chain(problem_rows, rows), prediction_columns(model.metadata), args.out, tally,
                       progress_total=len(collected.paths) + len(collected.problems))
        except (KeyboardInterrupt, SystemExit):
            if args.out is not None:
                print(f"\nstopped: nothing written to {args.out} (it is as it was)", file=sys.stderr)
            raise
    print(tally.line() + (f" → {args.out}" if args.out else ""), file=sys.stderr)
    return EXIT_INPUTS_FAILED if tally.counts["error"] else EXIT_OK


def station_warnings(metadata) -> list[str]:
    """What a station must know before trusting this model's rows: no OOD gate, gate scores that can
    never fire (too few calibration images), tasks whose labels carry no certified accuracy."""
    from mscvision.runtime.gate import NO_GATE_DETAIL, has_gate, load_gate

    lines = [] if has_gate(metadata) else [f"note: {NO_GATE_DETAIL} (column gate=none)"]
    gate = load_gate(metadata)
    lines += [f"warning: OOD gate: {line}" for line in (gate.never_fire() if gate else [])]
    lines += [f"warning: {task.name}: the model states no certified review threshold (exported without "
              f"calibration): its labels carry no accuracy guarantee" for task in metadata.tasks
              if task.abstention is None]
    return lines


def run_info(args: argparse.Namespace) -> int:
    from mscvision.runtime.model import inspect_model

    metadata, sha256 = inspect_model(args.model, args.expect_sha256)  # one read: the hash is of what was parsed
    if args.json:
        print(json.dumps(metadata.raw, indent=2))
    else:
        print(describe(metadata.raw, sha256))
    return EXIT_OK


def describe(raw: dict, sha256: str) -> str:
    """The metadata and model card as readable text."""
    lines = [f"model        {raw.get('name', '?')} ({raw['precision']}, format {raw['format_version']})",
             f"sha256       {sha256}",
             f"input        float32 (N, {raw['input']['channels']}, {raw['input']['height']}, "
             f"{raw['input']['width']}); images up to {raw['input']['max_image_side']} px a side"]
    for task in raw["tasks"]:
        lines.append(f"task         {task['name']}: {', '.join(task['classes'])} "
                     f"(temperature {task['temperature']:g}, applied in the graph; review below p={task['threshold']:g})")
    if raw.get("test_time_augmentation"):
        lines.append(f"TTA          {raw['test_time_augmentation']} (8x the compute per image)")
    lines.append("preprocess   " + ", ".join(_preprocess_item(k, v) for k, v in raw["preprocess"].items() if v is not None))
    prov = raw.get("provenance", {})
    lines.append(f"provenance   config {prov.get('config_hash')}, manifest {str(prov.get('data_manifest_sha256'))[:16]}, "
                 f"git {prov.get('git_commit') or 'unknown'}")
    for task, figures in (prov.get("test_metrics") or {}).items():
        lines.append(f"test         {task} ({prov.get('test_metrics_setup') or 'plain single pass'}): balanced accuracy {figures['balanced_accuracy']:.3f}, "
                     f"macro F1 {figures['macro_f1']:.3f}, n={figures['n']}")
    from mscvision.runtime.gate import OOD_KEY, describe_gate  # numpy: imported when the command runs

    lines += describe_gate(raw.get(OOD_KEY))
    lines.append("versions     " + ", ".join(f"{k} {v}" for k, v in raw.get("versions", {}).items()))
    for key, text in raw.get("model_card", {}).items():
        lines.append(f"\n{key.replace('_', ' ').capitalize()}:\n  {text}")
    return "\n".join(lines)


def _preprocess_item(key: str, value: object) -> str:
    if key == "channels":  # numpy order, as in the source: say so, or a user counts from 1
        return f"channels={value} (0-based indices into the decoded channels)"
    return f"{key}={value}"


def run_verify(args: argparse.Namespace) -> int:
    from mscvision.runtime.model import load_model
    from mscvision.runtime.verify import default_vectors_dir, model_tolerances, verify_model

    # the providers predict would use (same --device default): verify checks what will run
    model = load_model(args.model, args.threads, args.device, expect_sha256=args.expect_sha256)
    folder = args.vectors or default_vectors_dir(Path(args.model))
    tolerances = model_tolerances(model)
    report = verify_model(model, folder)
    station = report.station
    print(f"onnxruntime {station['onnxruntime']} on {station['machine']} ({station['system']}), "
          f"threads {station['intra_op_threads']}, providers {', '.join(station['providers'])}")
    print(f"cpu flags: {' '.join(station['cpu_flags']) or 'unknown'}")
    print(f"tolerances: tensor {tolerances.tensor_max_abs:.0e}, probability {tolerances.probability_max_abs:.0e} "
          f"(from {tolerances.source})")
    for note in report.notes:
        print(f"note: {note}")
    for line in report.lines:
        print(line)
    if report.passed:
        print(f"verify: PASS ({len(report.lines)} vectors, {folder}, on {', '.join(model.providers)})")
        return EXIT_OK
    for failure in report.failures:
        print(f"error: {failure}", file=sys.stderr)
    print(f"verify: FAIL ({len(report.failures)} problem(s)); this station does not reproduce the export",
          file=sys.stderr)
    return EXIT_INPUTS_FAILED
