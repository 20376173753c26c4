"""Arguments of `mscvision bench` / `scripts/benchmark.py` (light: no torch import)."""

from __future__ import annotations

import argparse

from mscvision.core.machine import usable_cores


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="trained run directories (runs/NAME)")
    parser.add_argument("--quick", action="store_true", help="reduced repeats and sizes (< 2 minutes)")
    parser.add_argument("--threads", type=int, default=usable_cores(),
                        help="total thread budget for every engine (default: all cores)")
    parser.add_argument("--out", metavar="FILE.json", help="write JSON here and the Markdown table beside it (.md)")
    parser.add_argument("--qc-fields", metavar="DIR", help="also benchmark `qc` on DIR/field_5000.tif and "
                                                          "field_10000.tif (scripts/make_big_field.py writes them) "
                                                          "with the first run's model")


def bench_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmark", description="benchmark trained runs against this machine's limit")
    add_bench_arguments(parser)
    return parser
