"""Where a run directory keeps its model: one rule for training, export, fine-tuning and benchmarks."""

from __future__ import annotations

import contextlib
import pickle
from pathlib import Path


def run_checkpoint(run_dir: Path) -> Path | None:
    """A run's model: ``best.ckpt`` (trainer.select=best), else ``last.ckpt`` (select=last, or an
    interrupted run); None when it has neither."""
    candidates = [run_dir / "checkpoints" / "best.ckpt", run_dir / "checkpoints" / "last.ckpt"]
    return next((c for c in candidates if c.is_file()), None)



# A .ckpt is a pickle, and unpickling can run any code the file names. Every checkpoint is therefore
# read with torch's weights_only unpickler (tensors, numbers, strings, lists and dicts only): our own
# checkpoints hold nothing else (the config is stored as a plain dict), so this costs nothing and a
# hostile file is refused before any of its code runs.
UNSAFE_CHECKPOINT_FIX = ("Fix: use a checkpoint written by mscvision's `scripts/train.py`; a .ckpt is code "
                         "and must come from a trusted source.")


def load_checkpoint(path: Path) -> dict:
    """The checkpoint's contents, refused clearly when it holds anything but tensors and plain values."""
    import torch

    with _refuse_unsafe(path):
        return torch.load(path, map_location="cpu", weights_only=True)


def load_classifier(path: Path):
    """The MscClassifier saved in ``path`` (CPU, eval mode), read with the same weights-only rule."""
    from mscvision.training.module import MscClassifier

    with _refuse_unsafe(path):
        return MscClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()


@contextlib.contextmanager
def _refuse_unsafe(path: Path):
    from mscvision.core.errors import DataError

    try:
        yield
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else "")
        raise DataError(f"{path}: refused to load: it holds objects other than tensors and plain values "
                        f"({reason}). {UNSAFE_CHECKPOINT_FIX}") from None
