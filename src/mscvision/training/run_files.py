"""Where a run directory keeps its model: one rule for training, export, fine-tuning and benchmarks."""

from __future__ import annotations

import contextlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

from mscvision.core.errors import DataError

MODEL_CHECKPOINTS = ("best.ckpt", "last.ckpt")  # a run's model: best (trainer.select=best), else last
RESUME_CHECKPOINTS = ("last.ckpt",)  # resume continues the latest state, whatever select says


class NoCheckpointError(DataError):
    """A path given as a run directory or checkpoint holds no checkpoint (export, fine-tuning, resume,
    benchmark: one error and one fix for all of them)."""


@dataclass(frozen=True)
class RunFiles:
    """A run directory and the checkpoint taken from it."""

    run_dir: Path
    checkpoint: Path

    @property
    def metrics(self) -> dict:
        """The run's ``metrics.json`` ({} when absent: an interrupted run, a checkpoint copied out)."""
        path = self.run_dir / "metrics.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def locate_run(target: str | Path, *, resume: bool = False, setting: str = "") -> RunFiles:
    """A run directory (its ``best.ckpt``, else ``last.ckpt``; with ``resume`` only ``last.ckpt``) or,
    unless ``resume``, a .ckpt file inside one. ``setting`` names what asked (``model.init_from``) in
    the error, raised when there is no checkpoint there."""
    path = Path(target)
    names = RESUME_CHECKPOINTS if resume else MODEL_CHECKPOINTS
    if path.is_dir():
        found = next((path / "checkpoints" / n for n in names if (path / "checkpoints" / n).is_file()), None)
        if found is not None:
            return RunFiles(path, found)
    elif path.is_file() and path.suffix == ".ckpt" and not resume:  # config.yaml is no checkpoint
        return RunFiles(path.parent.parent, path)  # RUN_DIR/checkpoints/NAME.ckpt
    raise NoCheckpointError(no_checkpoint_message(path, names, resume, setting))


def no_checkpoint_message(path: Path, names: tuple[str, ...], resume: bool, setting: str = "") -> str:
    looked = " or ".join(f"checkpoints/{n}" for n in names) + ("" if resume else ", and not a .ckpt file")
    accepts = "a run directory written by `scripts/train.py`" + ("" if resume else ", or one of its .ckpt files")
    return f"{setting + '=' if setting else ''}{path}: no checkpoint there (no {looked}). Fix: pass {accepts}."


def new_run_dir(config) -> Path:
    """``runs/<name>``, or ``runs/<name>-2``, ``-3``… when taken: a run never overwrites another."""
    base = Path(config.output_dir) / config.name
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{config.name}-{n}")
    candidate.mkdir(parents=True)
    return candidate


def manifest_record(source: Path | None, rows: int) -> dict | None:
    """Which data the run saw, for ``metrics.json`` run.data_manifest: the manifest file, a name that
    is true on any machine (``FOLDER/FILE``: what a model card may carry) and its SHA-256; None for a
    class-per-folder tree (no manifest file)."""
    from mscvision.core.fileio import sha256_file

    if source is None or not source.is_file():
        return None
    source = source.resolve()
    return {"path": str(source), "name": f"{source.parent.name}/{source.name}", "sha256": sha256_file(source),
            "rows": rows}


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
    try:
        yield
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else "")
        raise DataError(f"{path}: refused to load: it holds objects other than tensors and plain values "
                        f"({reason}). {UNSAFE_CHECKPOINT_FIX}") from None
