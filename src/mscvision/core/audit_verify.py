"""Verify an audit log (``mscvision audit verify``) and read its runs (``mscvision audit show``).

Streaming: the log and its checkpoints are read one line at a time, side by side (checkpoints are
in size order, so each is checked when the walk reaches the record it signs); memory is one record
and one checkpoint, whatever the log's length. The sizes of both files are taken under a shared
lock, so an append running meanwhile is neither half-seen nor blocked for long.

The first problem found is reported, as one ``Finding`` naming the first bad record and the kind:

* ``edited``: a record whose content does not match its hash, or that is not canonical JSON, or
  whose ``prev`` is not the hash of the record before it (that one was rewritten, its hash
  recomputed);
* ``deleted`` / ``reordered`` / ``inserted``: a record number missing (and not found later), a
  missing number found later in the file, a number seen twice;
* ``rewritten``: the chain is whole but the record a checkpoint signed is not there (the last k
  records, or all after some point, rewritten with every hash recomputed);
* ``truncated``: the log ends before the records its last checkpoint signs;
* ``torn``: the last line is a record (or checkpoint) cut short by a kill or power loss;
* ``unsigned``: records after the last checkpoint (a run that never wrote its checkpoint, or added
  lines);
* ``other-key``: a checkpoint not signed by the station's key, or records naming another key;
* ``checkpoint``: a checkpoint that is malformed, edited after signing, out of order, or of another log.
"""

from __future__ import annotations

import base64
import heapq
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from mscvision.core.audit import (GENESIS, AuditError, Checkpoint, checkpoints_path, locked_log, parse_checkpoint,
                                  read_checkpoint_line, record_problem)
from mscvision.core.signing import fingerprint, public_from_raw, raw_public

FINDINGS = ("edited", "deleted", "reordered", "inserted", "rewritten", "truncated", "torn", "unsigned", "other-key",
            "checkpoint")


@dataclass(frozen=True)
class Finding:
    kind: str  # one of FINDINGS
    message: str
    record: int | None = None  # the number of the first bad record (where it should be)
    line: int | None = None  # 1-based line of the log where it was found


@dataclass
class Verification:
    log: Path
    pinned: bool  # checked against a key the caller gave, not only the key the log names
    records: int = 0
    runs: int = 0
    nbytes: int = 0
    head: str = GENESIS
    station: str | None = None
    key_fingerprint: str | None = None
    checkpoints: int = 0
    last_checkpoint: Checkpoint | None = None
    finding: Finding | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return self.finding is None


class _Found(Exception):
    def __init__(self, kind: str, message: str, record: int | None = None, line: int | None = None):
        super().__init__(message)
        self.finding = Finding(kind, message, record, line)


def verify_log(log_path: str | os.PathLike, keys=(), witnesses: tuple[Checkpoint, ...] = ()) -> Verification:
    """Walk the whole log once; ``keys``: the station public key(s) to pin (else the key the log names
    is used, and ``pinned`` is False); ``witnesses``: checkpoints kept elsewhere (``read_witness``)."""
    log = Path(log_path)
    if not log.is_file():
        raise AuditError(f"{log}: no such audit log")
    cp_path = checkpoints_path(log)
    with locked_log(log, exclusive=False):  # sizes of one moment: no half-written run is seen
        log_size = log.stat().st_size
        cp_size = cp_path.stat().st_size if cp_path.exists() else 0
    result = Verification(log, pinned=bool(keys))
    try:
        _walk(log, log_size, _checkpoints(cp_path, cp_size, witnesses), keys, result)
    except _Found as found:
        result.finding = found.finding
    return result


def read_witness(path: str | os.PathLike) -> Checkpoint:
    """A checkpoint kept elsewhere: the signed note as text, or a line of a checkpoints file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditError(f"{path}: cannot be read as a checkpoint ({exc})") from exc
    try:
        if text.lstrip().startswith("{"):
            return read_checkpoint_line(text.strip().encode("utf-8"), path.name)
        return parse_checkpoint(text, path.name)
    except ValueError as exc:
        raise AuditError(str(exc)) from None


# --- the walk ------------------------------------------------------------------------------------------

def _lines(path: Path, limit: int) -> Iterator[tuple[int, int, bytes]]:
    """(1-based line, byte offset, bytes with the newline) up to ``limit`` bytes."""
    with open(path, "rb") as f:
        offset, number = 0, 0
        while offset < limit:
            line = f.readline(limit - offset)
            if not line:
                return
            number += 1
            yield number, offset, line
            offset += len(line)


def _checkpoints(cp_path: Path, cp_size: int, witnesses) -> Iterator[Checkpoint]:
    return heapq.merge(_file_checkpoints(cp_path, cp_size), sorted(witnesses, key=lambda c: c.size),
                       key=lambda c: c.size)


def _file_checkpoints(cp_path: Path, cp_size: int) -> Iterator[Checkpoint]:
    last = 0
    for number, offset, line in _lines(cp_path, cp_size) if cp_size else ():
        where = f"{cp_path.name} line {number}"
        if not line.endswith(b"\n"):
            raise _Found("torn", f"{where}: the last {len(line)} bytes (from byte {offset}) are a checkpoint cut short "
                                 "(a write interrupted by a kill or power loss); `mscvision audit repair` moves them "
                                 "aside and records it")
        try:
            cp = read_checkpoint_line(line, where)
        except ValueError as exc:
            raise _Found("checkpoint", f"{exc}: the checkpoints file was edited") from None
        if cp.size <= last:
            raise _Found("checkpoint", f"{where} signs {cp.size} records after one that signed {last}: checkpoints "
                                       "were reordered or copied")
        last = cp.size
        yield cp


@dataclass
class _State:
    expected: int = 0  # the number the next record must have
    prev: str = GENESIS
    offset: int = 0
    key_b64: str | None = None
    public: object = None
    log_id: str | None = None
    signed: int = 0  # records covered by the last checkpoint that matched


def _walk(log: Path, log_size: int, checkpoints: Iterator[Checkpoint], keys, result: Verification) -> None:
    state = _State()
    pending = next(checkpoints, None)
    lines = _lines(log, log_size)
    for number, start, line in lines:
        record = _checked_record(number, start, line, state, lines)
        _check_key(record, number, state, keys, result)
        state.expected, state.prev, state.offset = state.expected + 1, record["hash"], start + len(line)
        result.records, result.nbytes, result.head = state.expected, state.offset, record["hash"]
        result.runs += record["kind"] == "run"
        while pending is not None and pending.size <= state.expected:
            _check_checkpoint(pending, record, number, state)
            state.signed = pending.size
            result.checkpoints += 1
            result.last_checkpoint = pending
            pending = next(checkpoints, None)
    if pending is not None:
        raise _Found("truncated", f"the log ends after record {state.expected - 1} ({state.offset} bytes), but "
                                  f"{pending.where} (signed {pending.time}) signs {pending.size} records "
                                  f"({pending.nbytes} bytes): records {state.expected}..{pending.size - 1} were cut off",
                     record=state.expected)
    if state.signed < state.expected:
        raise _Found("unsigned", f"records {state.signed}..{state.expected - 1} are signed by no checkpoint: the run "
                                 "that wrote them stopped before its checkpoint, its checkpoint was removed, or they "
                                 "were added by hand", record=state.signed)
    if not state.expected:
        result.notes.append("the log is empty")


def _checked_record(number: int, start: int, line: bytes, state: _State, lines) -> dict:
    where = f"line {number} (byte {start}), where record {state.expected} belongs"
    if not line.endswith(b"\n"):
        raise _Found("torn", f"{where}: the last {len(line)} bytes are a record cut short (a write interrupted by a "
                             "kill or power loss); `mscvision audit repair` moves them aside and records it",
                     record=state.expected, line=number)
    record, why = record_problem(line)
    if why:
        raise _Found("edited", f"{where}: {why}", record=state.expected, line=number)
    if record["seq"] != state.expected:
        _out_of_place(record, number, state, lines)
    if record["prev"] != state.prev:
        following = next(lines, None)
        again = following is not None and _seq_of(following[2]) == record["seq"]
        if again:
            raise _Found("inserted", f"{where}: a record {record['seq']} that does not chain to record "
                                     f"{record['seq'] - 1}, and line {following[0]} holds another record "
                                     f"{record['seq']}: a record was inserted", record=state.expected, line=number)
        raise _Found("edited", f"{where}: record {record['seq']} does not chain to record {record['seq'] - 1} (its prev "
                               f"is not that record's hash): record {record['seq'] - 1} was rewritten with its hash "
                               f"recomputed, or record {record['seq']} was replaced",
                     record=max(record["seq"] - 1, 0), line=number)
    return record


def _out_of_place(record: dict, number: int, state: _State, lines) -> None:
    seq, expected = record["seq"], state.expected
    where = f"line {number}, where record {expected} belongs"
    if record["prev"] == state.prev:
        raise _Found("edited", f"{where}: the record chains from record {expected - 1} but is numbered {seq}: its "
                               "number was edited (and its hash recomputed)", record=expected, line=number)
    if seq < expected:
        raise _Found("inserted", f"{where}: a second record {seq} (record {seq} came earlier): a record was inserted "
                                 "or copied", record=expected, line=number)
    for later, _, text in lines:  # a missing number found further on was moved, not deleted
        found = _seq_of(text)
        if found is not None and expected <= found < seq:
            raise _Found("reordered", f"{where}: record {seq} stands there, and record {found} is at line {later}: "
                                      "records were moved", record=expected, line=number)
    missing = f"record {expected} is" if seq == expected + 1 else f"records {expected}..{seq - 1} are"
    raise _Found("deleted", f"{where}: {missing} missing (record {seq} follows record {expected - 1}); they appear "
                            "nowhere later in the log", record=expected, line=number)


def _seq_of(line: bytes) -> int | None:
    try:
        value = json.loads(line).get("seq")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, int) else None


def _check_key(record: dict, number: int, state: _State, keys, result: Verification) -> None:
    """One station key and station id per log: the first record's, pinned by ``keys`` when given."""
    if state.key_b64 is None:
        try:
            state.public = public_from_raw(base64.b64decode(record["key"], validate=True))
        except ValueError:
            raise _Found("edited", f"line {number}: record 0's key is not an Ed25519 public key", record=0,
                         line=number) from None
        state.key_b64, state.log_id = record["key"], record["hash"][:16]
        result.station, result.key_fingerprint = record["station"], fingerprint(state.public)
        raw = raw_public(state.public)
        if keys and not any(raw_public(k) == raw for k in keys):
            given = ", ".join(fingerprint(k)[:16] + "…" for k in keys)
            raise _Found("other-key", f"the log was written under station key {result.key_fingerprint[:16]}…, not "
                                      f"the key given ({given}): the whole log was written, or rewritten, with "
                                      "another key", record=0, line=number)
    elif record["key"] != state.key_b64 or record["station"] != result.station:
        raise _Found("other-key", f"line {number}: record {record['seq']} names station {record['station']!r} and "
                                  "another key than record 0: one log has one station and one key",
                     record=record["seq"], line=number)


def _check_checkpoint(cp: Checkpoint, record: dict, number: int, state: _State) -> None:
    if cp.size < state.expected:  # sizes are increasing and checked at each record: only a size of 0 gets here
        raise _Found("checkpoint", f"{cp.where} signs {cp.size} records, which is no state of this log")
    problem = cp.problem(state.public)
    if problem:
        kind = "other-key" if problem.startswith("signed by another key") else "checkpoint"
        raise _Found(kind, f"{cp.where} (signs {cp.size} records, time {cp.time}) is {problem}",
                     record=cp.size - 1)
    if cp.station != record["station"]:
        raise _Found("checkpoint", f"{cp.where} belongs to station {cp.station!r}, not to this log's "
                                   f"{record['station']!r}", record=cp.size - 1)
    if cp.log_id != state.log_id:  # signed by this station's key, for a log whose record 0 was another
        raise _Found("rewritten", f"{cp.where} (signed {cp.time}) signs a log whose record 0 hashes to {cp.log_id}…, "
                                  f"this log's record 0 hashes to {state.log_id}…: records 0..{cp.size - 1} were "
                                  "rewritten from the first record on (every hash recomputed)", record=0)
    if cp.head != record["hash"] or cp.nbytes != state.offset:
        raise _Found("rewritten", f"record {cp.size - 1} (line {number}) is not the one {cp.where} signed at {cp.time} "
                                  f"(signed head {cp.head[:16]}… after {cp.nbytes} bytes; the log has "
                                  f"{record['hash'][:16]}… after {state.offset} bytes): records {state.signed}.."
                                  f"{cp.size - 1} were rewritten after they were signed (their hashes recomputed, so "
                                  "the chain alone looks whole)", record=state.signed, line=number)


# --- reading runs (`audit show`) --------------------------------------------------------------------------

def iter_records(log_path: str | os.PathLike) -> Iterator[dict]:
    """Every parseable record, in file order, unverified (`audit verify` says whether to trust them)."""
    log = Path(log_path)
    if not log.is_file():
        raise AuditError(f"{log}: no such audit log")
    for _, _, line in _lines(log, log.stat().st_size):
        try:
            record = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(record, dict) and "kind" in record:
            yield record


def run_records(log_path: str | os.PathLike, run_id: str) -> Iterator[dict]:
    """The records of one run (its ``run`` or ``repair`` record first, then its images), streamed."""
    seen = False
    for record in iter_records(log_path):
        if record.get("run_id") == run_id:
            seen = True
            yield record
        elif seen:
            return
    if not seen:
        raise AuditError(f"{log_path}: no run {run_id!r}. Fix: `mscvision audit show {log_path}` lists the runs.")
