"""Lightning's every-run notices are silenced by their exact text; everything else it says still shows."""

from __future__ import annotations

import logging
import warnings

from mscvision.training.quiet import NOTICE_LOGGERS, quiet_lightning


class Keep(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_notices_are_dropped_and_real_messages_kept():
    from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

    quiet_lightning()
    quiet_lightning()  # twice: still one filter per logger
    kept = Keep()
    loggers = [logging.getLogger(name) for name in NOTICE_LOGGERS]
    for logger in loggers:
        assert len(logger.filters) == len(set(map(id, logger.filters)))
        logger.addHandler(kept)
    try:
        rank_zero_info("GPU available: False, used: False")
        rank_zero_info("`Trainer(limit_val_batches=1.0)` was configured so 100% of the batches will be used..")
        rank_zero_info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
        logging.getLogger("lightning.fabric.utilities.distributed").info(
            "Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2")
        rank_zero_info("Using bfloat16 Automatic Mixed Precision (AMP)")  # what precision: kept
        rank_zero_info("`Trainer(limit_val_batches=1)` was configured so 1 batch will be used.")  # not the default
        rank_zero_info("`Trainer.fit` stopped: `max_epochs=2` reached.")
        with warnings.catch_warnings(record=True) as caught:  # the filters change inside this block only
            warnings.simplefilter("always")
            quiet_lightning()  # its ignores go in front of "always"
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use TreeSpec", FutureWarning)
            warnings.warn("The number of training batches (1) is smaller than the logging interval", UserWarning)
            warnings.warn("some other deprecation", FutureWarning)
            rank_zero_warn("GPU available but not used. You can set it by doing `Trainer(accelerator='gpu')`.")
    finally:
        for logger in loggers:
            logger.removeHandler(kept)
    assert kept.messages == ["Using bfloat16 Automatic Mixed Precision (AMP)",
                             "`Trainer(limit_val_batches=1)` was configured so 1 batch will be used.",
                             "`Trainer.fit` stopped: `max_epochs=2` reached."]
    assert [str(w.message) for w in caught] == [
        "some other deprecation", "GPU available but not used. You can set it by doing `Trainer(accelerator='gpu')`."]
