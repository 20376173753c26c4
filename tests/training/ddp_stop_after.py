"""A training run cut after N epochs under Lightning's own DDP launcher (tests/training/test_ddp.py).

    python tests/training/ddp_stop_after.py N KEY=VALUE ...

Lightning starts the other ranks by running this file again, as it runs scripts/train.py again, so
the callback that stops the fit cleanly after N epochs (checkpoints saved: an interrupted run) is
in every process.
"""

import sys

import lightning as L


class StopAfter(L.Callback):
    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


if __name__ == "__main__":
    from mscvision.training.config import load_config
    from mscvision.training.distributed import is_primary, quiet_secondary
    from mscvision.training.fit import train

    quiet_secondary()
    result = train(load_config(None, sys.argv[2:]), callbacks=(StopAfter(int(sys.argv[1])),))
    if is_primary():
        print(f"run directory: {result.run_dir}")
