"""Where a run directory keeps its model: one rule for training, export, fine-tuning and benchmarks."""

from __future__ import annotations

from pathlib import Path


def run_checkpoint(run_dir: Path) -> Path | None:
    """A run's model: ``best.ckpt`` (trainer.select=best), else ``last.ckpt`` (select=last, or an
    interrupted run); None when it has neither."""
    candidates = [run_dir / "checkpoints" / "best.ckpt", run_dir / "checkpoints" / "last.ckpt"]
    return next((c for c in candidates if c.is_file()), None)
