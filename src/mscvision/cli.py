"""The `mscvision` console script: one parser, subcommands that import their layer only when run.

`mscvision --help` and `mscvision predict` never import torch; `--help` imports no numpy either.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from mscvision import __version__
from mscvision.core.errors import EXIT_INPUTS_FAILED, EXIT_INTERNAL, MscvisionError


def _run_synth(args: argparse.Namespace) -> int:
    from mscvision.synth.cli import run

    return run(args)


def run_export(args: argparse.Namespace) -> int:
    from mscvision.export import export_run

    export_run(args.run, args.out, args.precision, threads=args.threads, parity_images=args.parity_images,
               calibration_images=args.calibration_images, ood_method=args.ood_method)
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mscvision.benchmarks.run import markdown, run_benchmark

    report = run_benchmark([Path(r) for r in args.runs], args.threads, args.quick,
                           Path(args.out) if args.out else None,
                           qc_fields=Path(args.qc_fields) if args.qc_fields else None)
    print(markdown(report))
    return 0


def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN_DIR_OR_CKPT", help="a run directory, or a checkpoint inside one")
    parser.add_argument("--out", help="NAME.onnx to write (default: RUN_DIR/model.onnx)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                        help="fp32 is always written; fp16/int8 add a variant beside it if it meets its gate")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads for the parity check")
    parser.add_argument("--parity-images", type=int, default=1024, help="most held-out images to check")
    parser.add_argument("--calibration-images", type=int, default=256, help="training images for int8")
    parser.add_argument("--ood-method", choices=("knn", "mahalanobis", "mahalanobis_energy"), default=None,
                        help="the learned OOD score inside the graph (default: the run's ood.method)")


def _synth_arguments(parser: argparse.ArgumentParser) -> None:
    from mscvision.synth.cli import add_arguments  # the synth package imports numpy

    add_arguments(parser)


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    from mscvision.benchmarks.arguments import add_bench_arguments

    add_bench_arguments(parser)


def _subcommands() -> list[tuple]:
    """(name, help, add its arguments, handler); export needs mscvision[train], predict/info/verify
    are the bare station install. ``commands.train`` and ``runtime.commands`` import nothing heavy
    at the top."""
    from mscvision.commands import audit, compare, evaluate, qc, train
    from mscvision.runtime import commands

    return [
        ("synth", "generate the synthetic MSC-culture data set", _synth_arguments, _run_synth),
        ("train", "train a model (needs mscvision[train])", train.add_train_arguments, train.run_train),
        ("export", "export a trained run to one ONNX file (needs mscvision[train])", _add_export_arguments,
         run_export),
        ("predict", "predict images with an exported model", commands.add_predict_arguments, commands.run_predict),
        ("info", "show a model's metadata and model card", commands.add_info_arguments, commands.run_info),
        ("verify", "check this station against a model's conformance vectors", commands.add_verify_arguments,
         commands.run_verify),
        ("evaluate", "evaluate a model on labelled images: metrics.json and report.html",
         evaluate.add_evaluate_arguments, evaluate.run_evaluate),
        ("compare", "compare an approved model with a candidate on labelled images: the paired report",
         compare.add_compare_arguments, compare.run_compare),
        ("qc", "judge whole-field images per well and lot against acceptance criteria: PASS / FAIL / REVIEW",
         qc.add_qc_arguments, qc.run_qc),
        ("audit", "the station's audit trail (keygen, verify, show, repair) and model approvals",
         audit.add_audit_arguments, audit.run_audit),
        ("bench", "benchmark trained runs (needs mscvision[train])", _bench_arguments, run_bench),
    ]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``only``, just that subcommand gets its arguments (the others keep their
    name and help line), so `mscvision --help` and `mscvision predict --help` import no numpy."""
    parser = argparse.ArgumentParser(prog="mscvision", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mscvision {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text, add_arguments, handler in _subcommands():
        command = sub.add_parser(name, help=text)
        command.set_defaults(handler=handler)
        if only is None or only == name:
            add_arguments(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # the first word that is not an option is the command (the top level has only --help, --version)
    args = build_parser(only=next((a for a in argv if not a.startswith("-")), "")).parse_args(argv)
    return guarded(args.handler, args, f"mscvision {args.command}")


def guarded(handler, args: argparse.Namespace, command: str) -> int:
    """Run a command with the shared exit codes: user errors as one line, bugs with a traceback."""
    try:
        return int(handler(args) or 0)
    except MscvisionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _reader_left(args)
    except ModuleNotFoundError as exc:
        if exc.name in ("torch", "torchvision", "lightning", "albumentations", "onnx", "onnxscript", "yaml"):
            print(f"error: `{command}` needs {exc.name}: pip install 'mscvision[train]'",
                  file=sys.stderr)
            return 2
        raise
    except Exception:  # a bug: show the traceback, exit 1 (docs/architecture.md exit codes)
        import traceback

        traceback.print_exc()
        return EXIT_INTERNAL


def _reader_left(args: argparse.Namespace) -> int:
    """stdout's reader closed the pipe. ``info | head`` read what it wanted: 0. ``predict | head``
    lost rows, so the run did not deliver them: EXIT_INPUTS_FAILED, said on stderr. stdout is pointed
    at /dev/null so that the interpreter's final flush does not fail again at exit."""
    import os

    with contextlib.suppress(OSError, ValueError):  # stdout may already be closed or not a real file
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    if args.command == "predict" and getattr(args, "out", None) is None:
        print("error: stdout was closed before every row was written (broken pipe); the rows are incomplete",
              file=sys.stderr)
        return EXIT_INPUTS_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
