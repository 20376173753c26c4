"""Arguments of `mscvision train` / `scripts/train.py` (no heavy imports: `mscvision --help` stays fast)."""

from __future__ import annotations

import argparse


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", default=None, metavar="FILE",
                        help="YAML config layered on the built-in defaults (configs/default.yaml lists them); "
                             "repeat to layer files, later ones overriding earlier ones (e.g. gpu.yaml)")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                        help="continue a run from RUN_DIR/checkpoints/last.ckpt with its saved config")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted config overrides, e.g. model.backbone=resnet34 trainer.max_epochs=5")
