"""The train command: arguments → config → one run → a short summary → the exported model."""

from __future__ import annotations

import argparse
from pathlib import Path

from mscvision.core.errors import DataError
from mscvision.training.config import load_config
from mscvision.training.fit import RunResult, train


def run_from_args(args: argparse.Namespace) -> int:
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "checkpoints" / "last.ckpt").is_file():
            raise DataError(f"{run_dir}: no checkpoints/last.ckpt to resume from. Fix: pass a run directory "
                            "made by `python scripts/train.py`.")
        config = load_config([run_dir / "config.yaml"], args.overrides)
        result = train(config, run_dir=run_dir, resume=True)
    else:
        config = load_config(args.config, args.overrides)
        result = train(config)
    print_summary(result)
    if result.metrics and config.export.enabled:
        from mscvision.export import export_run

        export_run(result.run_dir, precision=config.export.precision)
    return 0


def print_summary(result: RunResult) -> None:
    print(f"\nrun directory: {result.run_dir}")
    if not result.metrics:
        print(f"stopped early; resume with: python scripts/train.py --resume {result.run_dir}")
        return
    print(f"evaluated checkpoint: {result.checkpoint}")
    print(f"{'split':6} {'task':18} {'bal.acc':>8} {'macroF1':>8} {'wF1':>8} {'n':>6}")
    for side in ("val", "test"):
        for task, m in result.metrics.get(side, {}).items():
            print(f"{side:6} {task:18} {m['balanced_accuracy']:8.3f} {m['macro_f1']:8.3f} "
                  f"{m['weighted_f1']:8.3f} {m['n']:6d}")
    print(f"wall time: {result.metrics['run']['seconds'] / 60:.1f} min "
          f"(metrics: {result.run_dir / 'metrics.json'})")
