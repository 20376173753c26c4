"""What Lightning prints at every run that a user of mscvision does not need, silenced in one place.

Each entry is one exact notice, matched by its text, so everything else Lightning says (real
warnings, the precision it picked, why a fit stopped, a resume's checkpoint) still shows. Logger
filters, not levels: a level would also hide the info lines worth reading. Installed when a
run builds its Trainer (``fit._build_trainer``), not at import, so importing mscvision changes no
logging of the importer's own.
"""

from __future__ import annotations

import logging
import re
import warnings

# Lightning's info banners and tips (logging records, INFO)
NOTICES = (
    r"GPU available: ", r"TPU available: ", r"HPU available: ",  # the hardware banner
    r"💡 Tip: ",  # litlogger / LitLogger advertising
    r"`Trainer\(limit_(train|val|test|predict)_batches=1\.0\)` was configured so 100% of the batches",  # the default
    r"Loading `train_dataloader` to estimate number of stepping batches",  # the schedule's length being measured
    r"LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES: ",  # per-process device banner
    r"You are using a CUDA device .* that has Tensor Cores",  # matmul-precision tip (training runs bf16 on CUDA)
    r"Initializing distributed: GLOBAL_RANK: ",  # one line per process at every DDP start
    r"-+\s*distributed_backend=",  # the "All distributed processes registered" box
    r"Your model can run with static graph optimizations",  # a DDP tip at teardown
)
# the loggers that emit them: Lightning's rank-zero helpers (fabric's and pytorch's share one record
# logger, whichever imported last), its process-group setup and its CUDA accelerator
NOTICE_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                  "lightning.fabric.utilities.distributed", "lightning.pytorch.accelerators.cuda")

# Python warnings from Lightning's internals, (message regex, category)
WARNINGS = (
    # torch deprecated LeafSpec; Lightning's own pytree helper still builds one at every fit
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # a small data set has fewer batches per epoch than log_every_n_steps: epoch figures are still logged
    (r"The number of training batches \(\d+\) is smaller than the logging interval", UserWarning),
    # with data.val_fraction 0 fit passes no val loader on purpose: the val split is then the
    # calibration slice, which must not pick epochs (training/fit.py)
    (r"You defined a `validation_step` but have no `val_dataloader`", UserWarning),
)


class _DropNotices(logging.Filter):
    pattern = re.compile("|".join(f"(?:{p})" for p in NOTICES))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage().lstrip())


_FILTER = _DropNotices()


def quiet_lightning() -> None:
    """Silence the notices above (idempotent)."""
    for name in NOTICE_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for message, category in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
