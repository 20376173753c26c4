"""`mscvision train` / `scripts/train.py`: arguments → config → one run → a short summary → the exported
model → its evaluation report (RUN_DIR/evaluation/report.html, commands/deliver.py).

Training (`training.fit.train(config) -> RunResult`) knows nothing of argparse or export; this
module reads the arguments, calls it, prints the summary and then calls export.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # at run time training is imported only when the command runs
    from mscvision.training.fit import RunResult


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", default=None, metavar="FILE",
                        help="YAML config layered on the built-in defaults (configs/default.yaml lists them); "
                             "repeat to layer files, later ones overriding earlier ones (e.g. gpu.yaml)")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                        help="continue a run from RUN_DIR/checkpoints/last.ckpt with its saved config")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted config overrides, e.g. model.backbone=resnet34 trainer.max_epochs=5")


def run_train(args: argparse.Namespace) -> int:
    """On several processes (trainer.devices > 1, torchrun, srun) every rank runs this; rank 0
    alone prints and exports, the others return 0 when their part of the run is done."""
    from mscvision.training.config import load_config
    from mscvision.training.distributed import is_primary, quiet_secondary
    from mscvision.training.fit import train

    quiet_secondary()
    if args.resume:
        from mscvision.training.run_files import locate_run

        if args.config:  # it would be silently ignored: a resumed run keeps the config it started with
            from mscvision.core.errors import ConfigError

            raise ConfigError("--resume uses the run's saved config.yaml; pass overrides only (KEY=VALUE), "
                              "not --config")

        run_dir = locate_run(Path(args.resume), resume=True).run_dir  # refused, naming the fix, without last.ckpt
        config = load_config([run_dir / "config.yaml"], args.overrides)
        result = train(config, run_dir=run_dir, resume=True)
    else:
        config = load_config(args.config, args.overrides)
        result = train(config)
    if not is_primary():
        return 0
    print_summary(result)
    if result.metrics and config.export.enabled:
        from mscvision.commands.deliver import export_and_report

        # the report's exit code (3: some test images could not be scored) is the command's
        return export_and_report(result.run_dir, config.export.precision)
    return 0


def print_summary(result: RunResult) -> None:
    from mscvision.training.evaluate import summary_lines

    print("\n".join(summary_lines(result)))
