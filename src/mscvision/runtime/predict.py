"""Batch prediction: image files → rows (DESIGN.md "Prediction rows"), written CSV or JSONL.

Rows: ``path``, ``status`` (ok | review | error), ``reason``, then per task ``TASK.label`` and
``TASK.p.CLASS``. An unreadable or mismatched file becomes an error row and the batch goes on.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, TextIO

import numpy as np

from mscvision.core.decisions import decide
from mscvision.core.errors import ImageError
from mscvision.core.fileio import atomic_path
from mscvision.runtime.inputs import load_input
from mscvision.runtime.metadata import ModelMetadata
from mscvision.runtime.model import Model


@dataclass
class Tally:
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "review": 0, "error": 0})
    started: float = field(default_factory=time.perf_counter)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def line(self) -> str:
        seconds = max(time.perf_counter() - self.started, 1e-9)
        parts = ", ".join(f"{n} {status}" for status, n in self.counts.items())
        return f"{self.total} images ({parts}) in {seconds:.1f} s: {self.total / seconds:.1f} images/s"


def prediction_columns(metadata: ModelMetadata) -> list[str]:
    columns = ["path", "status", "reason"]
    for task in metadata.tasks:
        columns += [f"{task.name}.label", *(f"{task.name}.p.{c}" for c in task.classes)]
    return columns


def predict_files(model: Model, paths: list[str], batch_size: int = 32, workers: int = 2) -> Iterator[dict]:
    """Rows in input order; decoding runs in a small thread pool (numpy and the decoders release the GIL)."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(paths), max(1, batch_size)):
            chunk = paths[start:start + batch_size]
            loaded = list(pool.map(lambda p: _try_load(p, model.metadata), chunk))
            good = [x for x, _ in loaded if x is not None]
            probs = model.predict(np.stack(good)) if good else {}
            k = 0
            for path, (x, reason) in zip(chunk, loaded):
                if x is None:
                    yield error_row(path, reason, model.metadata)
                else:
                    yield result_row(path, {t: p[k] for t, p in probs.items()}, model.metadata)
                    k += 1


def _try_load(path: str, metadata: ModelMetadata) -> tuple[np.ndarray | None, str]:
    try:
        return load_input(path, metadata), ""
    except ImageError as exc:
        message = str(exc)
        return None, message[len(path) + 2:] if message.startswith(f"{path}: ") else message


def result_row(path: str, probs: dict[str, np.ndarray], metadata: ModelMetadata) -> dict:
    row: dict = {"path": path, "status": "ok", "reason": ""}
    doubts = []
    for task in metadata.tasks:
        decision = decide(probs[task.name], task.classes, task.threshold)
        if decision.abstained:
            doubts.append(f"{task.name}: top probability {decision.probability:.3f} < threshold {task.threshold:.3f}")
        row[f"{task.name}.label"] = decision.label
        row.update({f"{task.name}.p.{c}": round(float(p), 6) for c, p in zip(task.classes, probs[task.name])})
    if doubts:
        row.update(status="review", reason="; ".join(doubts))
    return row


def error_row(path: str, reason: str, metadata: ModelMetadata) -> dict:
    row = dict.fromkeys(prediction_columns(metadata), "")
    row.update(path=path, status="error", reason=reason)
    return row


def write_rows(rows: Iterable[dict], columns: list[str], out: Path | None, tally: Tally,
               progress_total: int = 0) -> None:
    """CSV (or JSONL by suffix) to ``out`` atomically, or CSV to stdout; a progress line on a terminal."""
    if out is None:
        _write(rows, columns, sys.stdout, "csv", tally, progress_total)
        return
    fmt = "jsonl" if out.suffix.lower() in (".jsonl", ".ndjson") else "csv"
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        _write(rows, columns, f, fmt, tally, progress_total)


def _write(rows: Iterable[dict], columns: list[str], f: TextIO, fmt: str, tally: Tally, total: int) -> None:
    writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n") if fmt == "csv" else None
    if writer:
        writer.writeheader()
    show = total > 0 and sys.stderr.isatty()
    for row in rows:
        tally.counts[row["status"]] += 1
        if writer:
            writer.writerow(row)
        else:
            f.write(json.dumps({c: row[c] if row[c] != "" or c == "reason" else None for c in columns}) + "\n")
        if show and (tally.total % 16 == 0 or tally.total == total):
            print(f"\r{tally.total}/{total} images", end="", file=sys.stderr, flush=True)
    if show:
        print(file=sys.stderr)

