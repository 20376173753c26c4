"""Batch prediction: image files → rows (docs/architecture.md "Prediction rows"), written CSV or JSONL.

Rows: ``path``, ``status`` (ok | review | error), ``reason``, then per task ``TASK.label`` and
``TASK.p.CLASS``, then ``gate`` (the OOD gate, runtime/gate.py: pass | flagged | none, for a model
without one) and ``gate.p`` (the smallest of its p-values), then ``notes`` (what decoding did: alpha
dropped, z-projected, ...; last, so that readers by position keep working). A flagged image is
``review`` with every reason that fired and labels ``review``; its probabilities are still written,
and its reason says they are not to be used. An unreadable or mismatched file, model outputs that are not
finite probabilities (NaN, logits, rows not summing to 1), or a batch the model fails on becomes
error rows and the run goes on.

What the output file goes through (``write_rows``):
- ``--out`` is checked before any work (``check_output_path``, ``check_not_an_input``) and held
  with a lock beside it (``fileio.exclusive_lock``), so a second run on it is refused.
- Rows are written, each flushed, into ``.NAME.partial-PID.SUFFIX`` beside it; at the end that file
  is fsynced and renamed into place. Ctrl-C or SIGTERM removes it and leaves ``--out`` as it was;
  an unexpected crash keeps it (the rows computed so far) and says where; after SIGKILL it stays
  under that name. A partial file is never renamed into place: under the real name it would pass
  for a complete run.
- CSV text cells that begin with ``= + - @``, a tab or a carriage return get a leading ``'``, so a
  spreadsheet shows them as text instead of running them as formulas; so do cells that begin with
  ``'`` itself, so a leading ``'`` is always ours (strip exactly one); numbers are never altered.
  Text that cannot be UTF-8 (a file name's undecodable bytes) is written with ``\\xNN`` escapes,
  so both formats are valid UTF-8; JSONL is strict JSON (no NaN: non-finite outputs are error rows).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence, TextIO

import numpy as np

from mscvision.core.conformal import GateDecision
from mscvision.core.decisions import REVIEW, decide
from mscvision.core.errors import ConfigError, ImageError
from mscvision.core.fileio import LockedError, atomic_path, exclusive_lock
from mscvision.runtime.gate import NOT_TO_BE_USED, Gate, has_gate, load_gate
from mscvision.runtime.metadata import ModelMetadata
from mscvision.runtime.model import Model

from mscvision.runtime.inputs import (DEFAULT_MAX_PIXELS, DecodeBudget, PreparedInput, prepare_input, scale_decoded,
                                     with_image_checks)

NOTES = "notes"
GATE, GATE_P = "gate", "gate.p"
# Not a column (the writers write prediction_columns only): the gate's whole decision for the row, its
# every p-value and score, kept on the row object for evaluation's OOD figures (runtime/ood_evaluation.py)
GATE_DECISION = "_gate_decision"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # OWASP's list for CSV injection
# ...and our own prefix: a text that already begins with ' gets one more, so that "a leading ' is
# always ours: strip exactly one" gives back every text, '=a.png included
PREFIXED_STARTS = (*FORMULA_STARTS, "'")
PROBABILITY_SLACK = 1e-4  # float32 softmax rounding, per value
SUM_SLACK = 1e-3  # and over a row
OUTPUT_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


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
    return columns + [GATE, GATE_P, NOTES]


def predict_files(model: Model, paths: list[str], batch_size: int = 32, workers: int = 2,
                  budget: DecodeBudget | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[dict]:
    """Rows in input order; decoding runs in a small thread pool (numpy and the decoders release the GIL)."""
    gate = load_gate(model.metadata)  # sound: load_model refused a model whose gate is not
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(paths), max(1, batch_size)):
            chunk = paths[start:start + batch_size]
            loaded = list(pool.map(lambda p: _try_prepare(p, model.metadata, budget, max_pixels), chunk))
            yield from _batch_rows(model, chunk, loaded, gate)


def _try_prepare(path: str, metadata: ModelMetadata, budget: DecodeBudget | None,
                 max_pixels: int) -> tuple[PreparedInput | None, str]:
    try:
        return prepare_input(path, metadata, budget, max_pixels), ""
    except ImageError as exc:
        return None, exc.reason  # the row's path column already names the file
    except Exception as exc:  # a decoder's surprise on one odd file must not end the run; the row says what
        return None, f"unexpected {type(exc).__name__} while reading it: {exc}"


def _try_prepare_decoded_many(decoded: list, metadata: ModelMetadata,
                              sources: list[str]) -> list[tuple[PreparedInput | None, str]]:
    """``_try_prepare`` for pixels already decoded: several same-sized tiles of a whole field
    (runtime/tiles.py), scaled one by one, their image checks measured together. A tile that fails is
    that tile's reason: when the checks fail as a group, each is measured alone, so the one that fails
    is named (an error row, never a label) and the others keep theirs, each with a note naming the
    group's failure (it is not swallowed: the row's notes say it)."""
    scaled = [_attempt(scale_decoded, d, metadata, s) for d, s in zip(decoded, sources)]
    good = [x for x, _ in scaled if x is not None]
    try:
        checked = iter([(x, "") for x in with_image_checks(good, metadata)])
    except Exception as exc:  # any failure: named in every tile's note or reason below
        failure = (f"image checks measured alone: measuring its chunk of {len(good)} tiles together failed "
                   f"({type(exc).__name__}: {exc})")
        checked = iter([_attempt(_checked_alone, x, metadata, failure) for x in good])
    return [(None, reason) if x is None else next(checked) for x, reason in scaled]


def _checked_alone(scaled, metadata: ModelMetadata, note: str) -> PreparedInput:
    prepared = with_image_checks([scaled], metadata)[0]
    return replace(prepared, notes=(*prepared.notes, note))


def _attempt(work, *args) -> tuple[object | None, str]:
    try:
        return work(*args), ""
    except ImageError as exc:
        return None, exc.reason
    except Exception as exc:  # as in _try_prepare: one odd tile must not end the field
        return None, f"unexpected {type(exc).__name__} while preparing it: {exc}"


def _batch_rows(model: Model, chunk: list[str], loaded: list[tuple[PreparedInput | None, str]],
                gate: Gate | None) -> list[dict]:
    """The rows of one batch; if the model (or anything after it) fails, that batch's rows say so and
    the run goes on: a provider error or out-of-memory late in a run costs one batch, not the run."""
    return rows_from_outputs(model, chunk, loaded, gate, batch_outputs(model, loaded, gate))


def batch_outputs(model: Model, loaded: list[tuple[PreparedInput | None, str]],
                  gate: Gate | None, stacked: np.ndarray | None = None) -> tuple[dict, np.ndarray | None] | Exception:
    """The graph run of one batch's readable images: per-task probabilities and the learned OOD score
    (None when the gate has none), or the exception that stopped it (``rows_from_outputs`` turns it into
    the batch's error rows). Split from the rows so that qc builds one batch's rows while the session
    runs the next (runtime/tiles.py). ``stacked``: the readable images' tensors as one array already
    (qc stacks them off the session's thread), else stacked here."""
    try:
        good = [x.tensor for x, _ in loaded if x is not None]
        if stacked is not None and len(stacked) != len(good):
            raise ValueError(f"{len(stacked)} stacked input(s) for {len(good)} readable image(s)")
        batch = stacked if stacked is not None else np.stack(good) if good else None
        probs, ood = {}, None
        if good and gate is not None and gate.learned_output:
            probs, ood = model.predict_with_ood(batch)  # the learned score from the same graph run
        elif good:
            probs = model.predict(batch)
        for task, p in probs.items():
            if len(p) != len(good):
                raise ValueError(f"{len(p)} {task} output row(s) for {len(good)} image(s)")
        return probs, ood
    except Exception as exc:
        # without its traceback: the frames it holds (this batch's tensors) would form a cycle with it,
        # which only the cyclic collector frees, and qc pauses that collector for a whole field
        return exc.with_traceback(None)


def rows_from_outputs(model: Model, chunk: list[str], loaded: list[tuple[PreparedInput | None, str]],
                      gate: Gate | None, outputs: tuple[dict, np.ndarray | None] | Exception) -> list[dict]:
    """One batch's rows from ``batch_outputs``; every row an error row, naming the failure, when the
    run (or building a row) failed."""
    if isinstance(outputs, Exception):
        return _failed_rows(model, chunk, loaded, outputs)
    try:
        return _predicted_rows(model, chunk, loaded, gate, *outputs)
    except Exception as exc:
        return _failed_rows(model, chunk, loaded, exc)


def _failed_rows(model: Model, chunk: list[str], loaded: list[tuple[PreparedInput | None, str]],
                 exc: Exception) -> list[dict]:
    failure = f"the model failed on this batch of {len(chunk)} image(s): {type(exc).__name__}: {exc}"
    return [error_row(path, reason or failure, model.metadata, prepared.notes if prepared else ())
            for path, (prepared, reason) in zip(chunk, loaded)]


def _predicted_rows(model: Model, chunk: list[str], loaded: list[tuple[PreparedInput | None, str]],
                    gate: Gate | None, probs: dict, ood: np.ndarray | None) -> list[dict]:
    rows, k = [], 0
    for path, (prepared, reason) in zip(chunk, loaded):
        if prepared is None:
            rows.append(error_row(path, reason, model.metadata))
            continue
        judged = gate.judge(prepared.checks, prepared.rules, None if ood is None else float(ood[k])) if gate else None
        row = result_row(path, {t: p[k] for t, p in probs.items()}, model.metadata, prepared.notes,
                         prepared.doubts, judged)
        if judged is not None and row["status"] != "error":
            row[GATE_DECISION] = judged
        rows.append(row)
        k += 1
    return rows


def result_row(path: str, probs: dict[str, np.ndarray], metadata: ModelMetadata,
               notes: Sequence[str] = (), doubts: Sequence[str] = (), gate: GateDecision | None = None) -> dict:
    """One image's row. ``doubts`` (from the input checks) and a flagged ``gate`` (the OOD gate's
    decision for this image) make it ``review`` with no label; its probabilities are still written."""
    broken = [t.name for t in metadata.tasks if not np.all(np.isfinite(probs[t.name]))]
    if broken:  # checked before decide(), which would refuse them too, so that the row names the cause
        return error_row(path, f"the model's output is not finite (NaN or Inf) for {', '.join(broken)}: no label "
                               "can be given; the image is likely outside what the model handles (check it)",
                         metadata, notes)
    for task in metadata.tasks:  # logits, or a graph whose softmax was lost, must never give a label
        problem = distribution_problem(probs[task.name])
        if problem:
            return error_row(path, f"the model's {task.name} output is not a probability distribution ({problem}): "
                                   "no label can be given. Fix: re-export the model with `mscvision export`",
                             metadata, notes)
    doubts = (*doubts, *gate_reasons(metadata, gate))  # a flagged image, like a doubted one, gets no label
    row: dict = {"path": path, "status": "ok", "reason": "", NOTES: "; ".join(notes), **gate_cells(metadata, gate)}
    reasons = list(doubts)
    for task in metadata.tasks:
        decision = decide(probs[task.name], task.classes, math.inf if task.abstains_on_all else task.threshold)
        if task.abstains_on_all:
            reasons.append(f"no certified threshold for {task.name}: the model's calibration could not show "
                           f"accuracy >= {task.abstention.get('target_accuracy')}, so every image is reviewed")
        elif decision.abstained:
            # p rounded down and the threshold up, so the printed figures never contradict the decision
            reasons.append(f"p={math.floor(decision.probability * 1000) / 1000:.3f} < "
                           f"{math.ceil(task.threshold * 1000) / 1000:.3f} for {task.name}")
        row[f"{task.name}.label"] = REVIEW if doubts else decision.label
        row.update({f"{task.name}.p.{c}": round(float(p), 6) for c, p in zip(task.classes, probs[task.name])})
    if reasons:
        row.update(status="review", reason="; ".join(reasons))
    return row


def gate_cells(metadata: ModelMetadata, gate: GateDecision | None) -> dict:
    """The ``gate`` and ``gate.p`` cells: none (the model has no gate), pass or flagged."""
    if not has_gate(metadata):
        return {GATE: "none", GATE_P: ""}
    if gate is None:  # a gated model whose gate was not run on this image: never a pass
        return {GATE: "flagged", GATE_P: ""}
    smallest = gate.smallest_p
    return {GATE: "flagged" if gate.flagged else "pass", GATE_P: "" if smallest is None else float(f"{smallest:.6g}")}


def gate_reasons(metadata: ModelMetadata, gate: GateDecision | None) -> list[str]:
    if not has_gate(metadata):
        return []
    if gate is None:
        return [f"the model's OOD gate was not run on this image; {NOT_TO_BE_USED}"]
    if not gate.flagged:
        return []
    return [f"OOD gate: {'; '.join(gate.reasons)}; {NOT_TO_BE_USED}"]


def distribution_problem(p: np.ndarray) -> str:
    """Why one image's output for one task is not probabilities ("" when it is): values in [0, 1]
    and a sum of 1, within float32 rounding of a softmax (PROBABILITY_SLACK, SUM_SLACK)."""
    low, high, total = float(p.min()), float(p.max()), float(p.sum(dtype=np.float64))
    if low < -PROBABILITY_SLACK or high > 1 + PROBABILITY_SLACK:
        return f"values from {low:.4g} to {high:.4g}, outside [0, 1]"
    if abs(total - 1) > SUM_SLACK:
        return f"they sum to {total:.4g}, not 1"
    return ""


def error_row(path: str, reason: str, metadata: ModelMetadata, notes: Sequence[str] = ()) -> dict:
    row = dict.fromkeys(prediction_columns(metadata), "")
    row.update(path=path, status="error", reason=reason)
    row[NOTES] = "; ".join(notes)
    return row


def output_format(out: Path) -> str:
    """CSV or JSONL by ``--out``'s suffix; any other suffix was refused by ``check_output_path``."""
    return OUTPUT_SUFFIXES[out.suffix.lower()]


def check_output_path(out: Path, model: str | Path) -> None:
    """Refuse an ``--out`` that would destroy something or cannot be written, before any work."""
    fix = "Fix: name a new or existing regular file, e.g. predictions.csv (omit --out for CSV on stdout)."
    if out.is_symlink():  # /dev/stdout, /dev/fd/N, a link to a shared file: the rename would replace the link
        raise ConfigError(f"--out {out}: is a symbolic link (to {os.readlink(out)}); the atomic rename would "
                          f"replace the link itself, not what it points to. {fix}")
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; --out names the file to write. {fix}")
    if out.exists() and not out.is_file():
        raise ConfigError(f"--out {out}: is a device, pipe or other special file, not a regular file; "
                          f"it cannot be replaced atomically. {fix}")
    folder = out.parent
    if not folder.is_dir():
        raise ConfigError(f"--out {out}: its folder {folder} does not exist. Fix: create it, or check the path.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: its folder {folder} is not writable by this user. {fix}")
    if _same_file(out, model):
        raise ConfigError(f"--out {out}: is the model file; writing there would destroy it. {fix}")
    if out.suffix.lower() not in OUTPUT_SUFFIXES:  # preds.json or run.png would silently get CSV
        raise ConfigError(f"--out {out}: the suffix {out.suffix or '(none)'!r} names no format this command "
                          f"writes; use {', '.join(OUTPUT_SUFFIXES)} (CSV or JSON lines).")


def check_not_an_input(out: Path, inputs: Iterable[str]) -> None:
    try:
        target = os.stat(out)
    except OSError:  # not there yet: it cannot be an input
        return
    for path in inputs:
        with contextlib.suppress(OSError):  # a missing input becomes its own error row
            if os.path.samestat(target, os.stat(path)):
                raise ConfigError(f"--out {out}: is also an input ({path}); writing there would destroy it. "
                                  "Fix: name another output file.")


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # either one missing: they cannot be the same file
        return False


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold ``--out`` for this run: a second run on the same file is refused, not silently lost."""
    try:
        with exclusive_lock(out):
            yield
    except LockedError as exc:
        raise ConfigError(f"--out {out}: cannot be locked for this run: {exc}. Fix: wait for the other run "
                          "to finish, or choose another --out.") from None


@contextlib.contextmanager
def sigterm_cleans_up() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler's stop) raises ``SystemExit(143)`` so that ``finally`` blocks run:
    the partial output is removed and ``--out`` stays as it was. Only the main thread can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_rows(rows: Iterable[dict], columns: list[str], out: Path | None, tally: Tally,
               progress_total: int = 0) -> None:
    """CSV (or JSONL by suffix) to ``out`` atomically, or CSV to stdout; a progress line on a terminal."""
    if out is None:
        _write(rows, columns, sys.stdout, "csv", tally, progress_total)
        return
    partial = None
    try:
        with atomic_path(out, keep_partial=True) as partial, open(partial, "w", encoding="utf-8", newline="") as f:
            _write(rows, columns, f, output_format(out), tally, progress_total)
    except Exception:
        if partial is not None and partial.exists():
            print(f"\nerror: the run stopped early; the {tally.total} row(s) written so far are kept in {partial} "
                  f"({out} is unchanged)", file=sys.stderr)
        raise


def _write(rows: Iterable[dict], columns: list[str], f: TextIO, fmt: str, tally: Tally, total: int) -> None:
    writer = csv.writer(f, lineterminator="\n") if fmt == "csv" else None
    if writer:
        writer.writerow([csv_cell(c) for c in columns])
    show = total > 0 and sys.stderr.isatty()
    for row in rows:
        tally.counts[row["status"]] += 1
        if writer:
            writer.writerow([csv_cell(row.get(c, "")) for c in columns])
        else:
            f.write(json_line(row, columns) + "\n")
        f.flush()  # streamed: a killed run leaves every finished row in its partial file
        if show and (tally.total % 16 == 0 or tally.total == total):
            print(f"\r{tally.total}/{total} images", end="", file=sys.stderr, flush=True)
    if show:
        print(file=sys.stderr)


def csv_cell(value):
    """Text made valid UTF-8 and, if a spreadsheet would read it as a formula, prefixed with ``'``."""
    if not isinstance(value, str):
        return value  # numbers are written as they are
    text = utf8_text(value)
    return "'" + text if text.startswith(PREFIXED_STARTS) else text


def json_line(row: dict, columns: list[str]) -> str:
    """Strict JSON: empty label/probability cells are null, text is valid UTF-8, NaN is refused."""
    record = {utf8_text(c): (utf8_text(row[c]) if isinstance(row[c], str) else row[c])
              if row.get(c, "") != "" or c in ("reason", NOTES) else None for c in columns}
    return json.dumps(record, allow_nan=False)


def utf8_text(text: str) -> str:
    """``text`` with lone surrogates written out as escapes: ``\\xNN`` for a file name's undecodable
    byte (Python's surrogateescape maps byte NN to U+DCNN), ``\\uNNNN`` for any other."""
    if text.isascii():
        return text
    return "".join(_escape(c) if "\ud800" <= c <= "\udfff" else c for c in text)


def _escape(c: str) -> str:
    code = ord(c)
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"
