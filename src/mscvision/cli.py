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
