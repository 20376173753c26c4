#!/usr/bin/env python
"""Train a model. With no arguments: the synthetic default data set, configs/default.yaml.

    python scripts/train.py [--config FILE ...] [--resume RUN_DIR] [key.sub=value ...]
"""

import argparse
import sys

from mscvision.cli import guarded, run_train
from mscvision.training.arguments import add_train_arguments

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_train_arguments(parser)
    sys.exit(guarded(run_train, parser.parse_args(), "scripts/train.py"))
