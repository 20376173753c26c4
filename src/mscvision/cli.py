"""The `mscvision` console script: one parser, subcommands that import their layer only when run.

`mscvision --help` and `mscvision predict` never import torch.
"""

from __future__ import annotations

import argparse
import sys

from mscvision import __version__
from mscvision.core.errors import EXIT_INTERNAL, MscvisionError


def _run_synth(args: argparse.Namespace) -> int:
    from mscvision.synth.cli import run

    return run(args)


def run_train(args: argparse.Namespace) -> int:
    from mscvision.training.entry import run_from_args

    return run_from_args(args)


def run_export(args: argparse.Namespace) -> int:
    from mscvision.export import export_run

    export_run(args.run, args.out, args.precision, threads=args.threads, parity_images=args.parity_images,
               calibration_images=args.calibration_images)
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mscvision.benchmarks.run import markdown, run_benchmark

    report = run_benchmark([Path(r) for r in args.runs], args.threads, args.quick,
                           Path(args.out) if args.out else None)
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


def _add_deploy_commands(sub) -> None:
    """export (needs mscvision[train]); predict, info, verify (the bare station install)."""
    from mscvision.runtime import commands

    _add_export_arguments(sub.add_parser("export", help="export a trained run to one ONNX file "
                                                        "(needs mscvision[train])"))
    sub.choices["export"].set_defaults(handler=run_export)
    for name, add, handler, text in (
            ("predict", commands.add_predict_arguments, commands.run_predict, "predict images with an exported model"),
            ("info", commands.add_info_arguments, commands.run_info, "show a model's metadata and model card"),
            ("verify", commands.add_verify_arguments, commands.run_verify,
             "check this station against a model's conformance vectors")):
        add(sub.add_parser(name, help=text))
        sub.choices[name].set_defaults(handler=handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mscvision", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mscvision {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from mscvision.synth.cli import add_arguments as add_synth_arguments

    add_synth_arguments(sub.add_parser("synth", help="generate the synthetic MSC-culture data set"))
    sub.choices["synth"].set_defaults(handler=_run_synth)

    from mscvision.training.arguments import add_train_arguments

    train = sub.add_parser("train", help="train a model (needs mscvision[train])")
    add_train_arguments(train)
    train.set_defaults(handler=run_train)
    _add_deploy_commands(sub)

    from mscvision.benchmarks.arguments import add_bench_arguments

    add_bench_arguments(sub.add_parser("bench", help="benchmark trained runs (needs mscvision[train])"))
    sub.choices["bench"].set_defaults(handler=run_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    except BrokenPipeError:  # `mscvision info MODEL | head`: the reader left; not an error
        sys.stderr.close()
        return 0
    except ModuleNotFoundError as exc:
        if exc.name in ("torch", "torchvision", "lightning", "albumentations", "onnx", "onnxscript", "yaml"):
            print(f"error: `{command}` needs {exc.name}: pip install 'mscvision[train]'",
                  file=sys.stderr)
            return 2
        raise
    except Exception:  # a bug: show the traceback, exit 1 (DESIGN.md exit codes)
        import traceback

        traceback.print_exc()
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
