#!/usr/bin/env python
"""Benchmark trained runs against this machine's limit; JSON (--out) and a Markdown table.

    python scripts/benchmark.py [--quick] [--threads N] [--out bench.json] RUN_DIR [RUN_DIR ...]
"""

import sys

from mscvision.benchmarks.arguments import bench_parser
from mscvision.cli import guarded, run_bench

if __name__ == "__main__":
    sys.exit(guarded(run_bench, bench_parser().parse_args(), "scripts/benchmark.py"))
