#!/usr/bin/env python
"""Train a model. With no arguments: the synthetic default data set, configs/default.yaml.

    python scripts/train.py [--config FILE ...] [--resume RUN_DIR] [key.sub=value ...]
"""

import argparse
import sys

from mscvision.cli import guarded
from mscvision.commands.train import add_train_arguments, run_train

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_train_arguments(parser)
    sys.exit(guarded(run_train, parser.parse_args(), "scripts/train.py"))
