"""The station's audit trail: an append-only JSONL log, hash-chained, with signed checkpoints.

21 CFR Part 11 §11.10(e) asks for secure, computer-generated, time-stamped audit trails whose
changes do not obscure what was recorded. Here:

* **Records** (``LOG``, one canonical JSON object per line: sorted keys, no spaces, UTF-8) carry
  ``seq`` (0, 1, 2, …), ``prev`` (the previous record's hash; 64 zeros for the first) and ``hash``
  (SHA-256 of the record's canonical JSON without ``hash``). An edited line no longer matches its
  hash; a deleted, inserted or moved one breaks ``seq`` and ``prev``. One ``qc`` run writes a
  ``run`` record (who, when, which model and spec, versions, verdicts) and one ``image`` record per
  input (its SHA-256 and result); ``repair`` records say what an operator did after a crash.
* **Checkpoints** (``LOG.checkpoints``, one JSON line ``{"note": TEXT}`` per run): the log's size
  in records and bytes and its head hash, signed by the station's Ed25519 key as a C2SP
  tlog-checkpoint-like signed note (core/signing.py). A hash chain alone does not stop someone who
  rewrites the last k records and recomputes every hash; the signed head does, since they cannot
  sign a new one without the station's private key.

  Why a separate file rather than a record kind inside the log: a checkpoint inside the log can be
  cut off together with the records it signs, and the shortened log is then a perfect, shorter
  log. Beside it, a truncated log is caught against the checkpoints that still sign its lost
  records, and the small checkpoints file (or one checkpoint, which ``qc`` copies into a run's
  output folder) can be kept elsewhere as a witness: ``audit verify --checkpoint FILE``. What no
  design without a witness catches is both files cut back together to an earlier run: keep
  witnesses (each run's output folder holds its checkpoint).

* **Appends** hold an exclusive ``flock`` on the log for the whole run (a second ``qc`` waits, so
  runs never interleave), write the run's records with one ``write`` (looping only on a short
  write), fsync the file (and its folder when created), then append and fsync the checkpoint.
  Before writing, the tail is checked against the last checkpoint (O(1), not the whole log): a
  torn last line (a write cut short by a kill or power loss), records no checkpoint signs, a tail
  that is not what the checkpoint signed, or a checkpoint signed by another key, and the append is
  refused (``AuditTrailBroken``, exit 6) until a person runs ``mscvision audit repair``, which moves
  the unsigned bytes aside into a file whose SHA-256 a ``repair`` record names. Nothing is ever
  silently merged or dropped.

The operator recorded is the name the station was given (``MSCVISION_OPERATOR``, else the station
config); it is **not an electronic signature** (no authentication, no signature manifestation
under Part 11 §11.50-§11.300): it says who the station was told is at it, and every record says so.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import getpass
import hashlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from mscvision.core.errors import AuditTrailBroken, ConfigError
from mscvision.core.signing import (check_key_name, fingerprint, note_problem, parse_note, public_from_raw,
                                    raw_public, sign_note)

FORMAT = 1  # the record envelope's "v"
GENESIS = "0" * 64
ORIGIN = "mscvision.audit/v1"  # first word of every checkpoint's origin line
ENVELOPE = ("v", "seq", "prev", "kind", "run_id", "time", "station", "key", "body", "hash")
KINDS = ("run", "image", "repair")
RUN_FIELDS = {"station_id": str, "operator": dict, "model": dict, "spec": dict, "versions": dict,
              "verdicts": (list, dict)}
OPERATOR_ENV = "MSCVISION_OPERATOR"
OPERATOR_NOTE = ("the name this station was given (MSCVISION_OPERATOR or the station config); NOT an electronic "
                 "signature: nobody was authenticated")
LOCK_TIMEOUT_S = 600.0  # a second qc waits this long for the first one's append before giving up
_HEX64 = re.compile(r"[0-9a-f]{64}")


class AuditError(ConfigError):
    """A record the caller built wrongly, or a log path that cannot be used (exit 2)."""


def checkpoints_path(log: str | os.PathLike) -> Path:
    log = Path(log)
    return log.with_name(log.name + ".checkpoints")


# --- canonical JSON and records ------------------------------------------------------------------------

def canonical_json(obj: object) -> bytes:
    """The one byte form that is hashed and stored: sorted keys, no spaces, UTF-8, no NaN/Infinity."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise AuditError(f"an audit record must be plain JSON (str, int, float, bool, None, list, dict with str keys; "
                         f"no NaN, no lone surrogates): {exc}. Fix the caller: convert before recording.") from exc


def record_hash(record: dict) -> str:
    return hashlib.sha256(canonical_json({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def make_record(seq: int, prev: str, kind: str, run_id: str, when: str, station: str, key_b64: str,
                body: dict) -> dict:
    record = {"v": FORMAT, "seq": seq, "prev": prev, "kind": kind, "run_id": run_id, "time": when,
              "station": station, "key": key_b64, "body": body}
    record["hash"] = record_hash(record)
    return record


def record_problem(line: bytes) -> tuple[dict | None, str | None]:
    """(record, None) for a line (with its newline) that is a well-formed record whose hash matches;
    else (record or None, why not). Being canonical matters: a reformatted line is an edited line."""
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None, "not a JSON object (the line was edited or corrupted)"
    if not isinstance(record, dict) or tuple(sorted(record)) != tuple(sorted(ENVELOPE)):
        return None, f"not an audit record (its keys are not {', '.join(ENVELOPE)})"
    texts = ("prev", "hash", "run_id", "time", "station", "key")
    if not (isinstance(record["seq"], int) and not isinstance(record["seq"], bool) and record["seq"] >= 0
            and all(isinstance(record[k], str) for k in texts) and record["kind"] in KINDS
            and isinstance(record["body"], dict) and record["v"] == FORMAT):
        return None, f"a field has the wrong type (seq, kind, body, v or one of {', '.join(texts)})"
    try:
        canonical = canonical_json(record) + b"\n"
    except AuditError:  # e.g. an escaped lone surrogate: no record of ours holds one
        canonical = b""
    if canonical != line:
        return record, "not in canonical form (sorted keys, no spaces, plain UTF-8): the line was rewritten by hand"
    if record_hash(record) != record["hash"]:
        return record, "its content does not match its hash: the record was edited"
    return record, None


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_run_id(when: str) -> str:
    """Readable and unique: the UTC time to the second, then 8 random hex digits."""
    return re.sub(r"[-:]", "", when[:19]) + "Z-" + uuid.uuid4().hex[:8]


# --- what qc puts in a run record ----------------------------------------------------------------------

def operator_identity(configured: str | None = None) -> dict:
    """Who the station was told runs it: ``MSCVISION_OPERATOR`` (the session's), else the station config's
    ``operator``, else unknown; with the OS account and the plain statement that this is no signature."""
    env = os.environ.get(OPERATOR_ENV, "").strip()
    name, source = (env, f"environment {OPERATOR_ENV}") if env else (
        (configured.strip(), "station config") if configured and configured.strip() else (None, "not given"))
    try:
        account = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        account = None
    return {"name": name, "source": source, "os_account": account, "note": OPERATOR_NOTE}


def software_versions() -> dict:
    """Versions of what judged (stdlib only: numpy is not imported to ask it its version)."""
    import importlib.metadata as md
    import platform

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("mscvision", "numpy", "onnxruntime", "onnxruntime-gpu", "pillow", "tifffile", "cryptography"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[name] = md.version(name)
    return versions


def file_record(path: str | os.PathLike) -> dict:
    """``{"path", "sha256", "bytes"}`` of an input file, for an image record."""
    from mscvision.core.fileio import sha256_file

    return {"path": str(path), "sha256": sha256_file(path), "bytes": os.path.getsize(path)}


def check_run_record(record: dict) -> str:
    """The station id of a run record with every field ``RUN_FIELDS`` names; ``AuditError`` otherwise."""
    if not isinstance(record, dict):
        raise AuditError(f"a run record is a dict, not {type(record).__name__}")
    for key, kind in RUN_FIELDS.items():
        if not isinstance(record.get(key), kind):
            raise AuditError(f"the run record lacks {key!r} (or it is not a {kind}); every run records "
                             f"{', '.join(RUN_FIELDS)}")
    for key in ("model", "spec"):
        if not _HEX64.fullmatch(str(record[key].get("sha256"))):
            raise AuditError(f"the run record's {key}.sha256 is not 64 lower-case hex digits")
    canonical_json(record)
    return check_key_name(record["station_id"])


def check_image_record(item: dict, index: int) -> dict:
    if not isinstance(item, dict) or not isinstance(item.get("path"), str):
        raise AuditError(f"image record {index}: a dict with a 'path' string")
    if item.get("sha256") is not None and not _HEX64.fullmatch(str(item["sha256"])):
        raise AuditError(f"image record {index} ({item['path']}): sha256 is neither None (unreadable) nor 64 hex")
    canonical_json(item)
    return item


# --- checkpoints --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Checkpoint:
    station: str
    log_id: str  # the first 16 hex digits of record 0's hash: a checkpoint names its own log
    size: int  # records signed
    head: str  # hex hash of record size-1
    nbytes: int  # bytes of those records
    time: str
    text: str  # the whole signed note
    where: str  # "FILE line N", for messages

    def problem(self, public_key) -> str | None:
        body, signatures = parse_note(self.text)
        return note_problem(body, signatures, public_key)


def checkpoint_note(station: str, log_id: str, size: int, head: str, nbytes: int, when: str, key) -> str:
    head_b64 = base64.b64encode(bytes.fromhex(head)).decode("ascii")
    body = f"{ORIGIN}/{station}/{log_id}\n{size}\n{head_b64}\nbytes {nbytes}\ntime {when}\n"
    return sign_note(body, station, key)


def parse_checkpoint(text: str, where: str) -> Checkpoint:
    """A checkpoint note's fields; ``ValueError`` naming ``where`` when it is not one."""
    try:
        body, _ = parse_note(text)
        origin, size, head_b64, nbytes, when = body[:-1].split("\n")
        prefix, station, log_id = origin.rsplit("/", 2)
        head = base64.b64decode(head_b64, validate=True).hex()
        if prefix != ORIGIN or not nbytes.startswith("bytes ") or not when.startswith("time ") or len(head) != 64:
            raise ValueError("unexpected lines")
        return Checkpoint(station, log_id, _count(size), head, _count(nbytes[6:]), when[5:], text, where)
    except (ValueError, ConfigError) as exc:
        raise ValueError(f"{where}: not an mscvision checkpoint ({exc})") from None


def _count(text: str) -> int:
    if not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        raise ValueError(f"{text!r} is not a count")
    return int(text)


def checkpoint_line(note: str) -> bytes:
    return canonical_json({"note": note}) + b"\n"


def read_checkpoint_line(line: bytes, where: str) -> Checkpoint:
    try:
        doc = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{where}: not a JSON line") from None
    if not isinstance(doc, dict) or set(doc) != {"note"} or not isinstance(doc["note"], str):
        raise ValueError(f"{where}: not a {{\"note\": TEXT}} line")
    return parse_checkpoint(doc["note"], where)


# --- files: lock, tail, writes ----------------------------------------------------------------------------

@contextlib.contextmanager
def locked_log(log: Path, exclusive: bool = True, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[int]:
    """The log's descriptor (opened for appending, created if absent) under ``flock``: exclusive for
    writers, who wait their turn; shared for a reader taking a consistent snapshot of the sizes."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; an audit log there would have no protection against two writers
        raise AuditError("the audit log needs POSIX file locks (fcntl.flock); run the station on Linux or "
                         "macOS") from None
    log.parent.mkdir(parents=True, exist_ok=True)
    created = not log.exists()
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND if exclusive else os.O_RDONLY
    try:
        fd = os.open(log, flags, 0o644)
    except OSError as exc:
        raise AuditError(f"{log}: cannot open the audit log ({exc.strerror or exc})") from exc
    try:
        _flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, log, timeout_s)
        if created:
            fsync_dir(log.parent)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def _flock(fd: int, mode: int, log: Path, timeout_s: float) -> None:
    import fcntl

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise AuditTrailBroken(f"{log}: another process has held the audit log's lock for {timeout_s:.0f} s; "
                                       "nothing was written. Fix: find the stuck station process.") from None
            time.sleep(0.02)
        except OSError as exc:  # ENOLCK / EOPNOTSUPP: network and FUSE file systems
            raise AuditError(f"{log}: the file system cannot lock files ({exc.strerror}); keep the audit log on a "
                             "local disk") from None


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot fsync a folder; the data itself is synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """One ``write`` of the whole buffer; a short write (a signal, a full disk) continues where it stopped."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError("write wrote nothing")
        view = view[written:]


def append_line(path: Path, line: bytes) -> None:
    """``line`` appended to ``path`` and fsynced (the folder too when the file is new)."""
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        write_all(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)


def line_ending_at(fd: int, end: int) -> tuple[int, bytes]:
    """(start, bytes) of the line whose newline is the byte at ``end - 1``, found by reading backwards."""
    start = after_last_newline(fd, end - 1)
    return start, os.pread(fd, end - start, start)


def after_last_newline(fd: int, end: int, chunk: int = 1 << 16) -> int:
    """The offset just after the last newline before ``end``; 0 when there is none."""
    pos = end
    while pos > 0:
        lo = max(0, pos - chunk)
        cut = os.pread(fd, pos - lo, lo).rfind(b"\n")
        if cut >= 0:
            return lo + cut + 1
        pos = lo
    return 0


def last_checkpoint(path: Path) -> tuple[Checkpoint | None, int, int]:
    """(the last checkpoint, the end of the last complete line, the file's size); a torn last line
    (no newline) is left out of the first two, so ``size > end`` says the file is torn."""
    if not path.exists():
        return None, 0, 0
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        end = after_last_newline(fd, size)
        if end == 0:
            return None, 0, size
        start, line = line_ending_at(fd, end)
        return read_checkpoint_line(line, f"{path.name} byte {start}"), end, size
    finally:
        os.close(fd)


# --- the state an append starts from -------------------------------------------------------------------

@dataclass(frozen=True)
class Head:
    size: int
    nbytes: int
    hash: str
    log_id: str | None
    station: str | None


def tail_problems(log: Path, fd: int, public_key, station: str) -> tuple[Head, list[str], dict]:
    """Where the signed log ends, and what lies beyond it that an append must not build on.

    Returns (head, problems, extra): ``head`` is the last checkpoint's state (verified against the
    log bytes it signs); ``problems`` are reasons an append is refused; ``extra`` locates the bytes
    a repair would move aside (``log_from``, ``checkpoints_from``). Raises ``AuditTrailBroken`` for
    what no repair may touch: a checkpoint not signed by this station's key, a log shorter than its
    checkpoint, a tail that is not what the checkpoint signed."""
    size = os.fstat(fd).st_size
    cp_path = checkpoints_path(log)
    try:
        cp, cp_end, cp_size = last_checkpoint(cp_path)
    except ValueError as exc:
        raise AuditTrailBroken(f"{exc}: the checkpoints file was edited. Run `mscvision audit verify {log}`.") from None
    problems, extra = [], {"log_from": size, "checkpoints_from": cp_size}
    if cp_size > cp_end:
        problems.append(f"{cp_path}: the last {cp_size - cp_end} bytes are a checkpoint cut short (a write "
                        "interrupted by a kill or power loss)")
        extra["checkpoints_from"] = cp_end
    head = Head(0, 0, GENESIS, None, None) if cp is None else _signed_head(log, fd, cp, size, public_key, station)
    if size > head.nbytes:
        extra["log_from"] = head.nbytes
        torn = os.pread(fd, 1, size - 1) != b"\n"
        what = ("ends in a record cut short (no newline: a write interrupted by a kill or power loss)" if torn else
                "holds records that no checkpoint signs (a run stopped before its checkpoint, or lines added)")
        problems.append(f"{log}: after the last signed record (byte {head.nbytes}) the log {what}; "
                        f"{size - head.nbytes} bytes")
    return head, problems, extra


def _signed_head(log: Path, fd: int, cp: Checkpoint, size: int, public_key, station: str) -> Head:
    def broken(why: str) -> AuditTrailBroken:
        return AuditTrailBroken(f"{log}: {why}. Nothing was written; the log needs investigating, not repair: run "
                                f"`mscvision audit verify {log} --key STATION.pub` and keep both files as they are.")

    problem = cp.problem(public_key)
    if problem:
        raise broken(f"the last checkpoint ({cp.where}) is {problem}")
    if cp.station != station:
        raise broken(f"the log belongs to station {cp.station!r}, not {station!r} (one log per station and key)")
    if cp.nbytes > size:
        raise broken(f"the log has {size} bytes but its last checkpoint signs {cp.nbytes}: it was truncated")
    if cp.size == 0 or cp.nbytes == 0:
        raise broken(f"the last checkpoint ({cp.where}) signs an empty log")
    start, line = line_ending_at(fd, cp.nbytes)
    record, why = record_problem(line)
    if why or record["seq"] != cp.size - 1 or record["hash"] != cp.head:
        raise broken(f"the record at byte {start} is not the record {cp.size - 1} that the last checkpoint "
                     f"signed ({why or 'another hash or number'}): the log was rewritten")
    first, first_line = record, line
    if start:
        first_line = os.pread(fd, min(start, 1 << 20), 0).split(b"\n", 1)[0] + b"\n"
        first, why = record_problem(first_line)
        if why:
            raise broken(f"record 0 is {why}")
    if first["hash"][:16] != cp.log_id:
        raise broken(f"the last checkpoint names log {cp.log_id}, but this log's record 0 makes it "
                     f"{first['hash'][:16]}: the checkpoints belong to another log")
    if base64.b64decode(record["key"]) != raw_public(public_key):
        raise broken("the records were written under another station key than the one given")
    return Head(cp.size, cp.nbytes, cp.head, cp.log_id, cp.station)


# --- appending a run ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Appended:
    run_id: str
    first_seq: int
    size: int  # records in the log after this run
    head: str  # hash of the last record written
    checkpoint: str  # the signed note: qc copies it into the run's output folder as a witness


def append_run(log_path: str | os.PathLike, record: dict, key, *, images: Iterable[dict] = ()) -> Appended:
    """Append one run (a ``run`` record, then one ``image`` record per item of ``images``) and its
    signed checkpoint. ``record`` must hold ``RUN_FIELDS``; ``key`` is the station's Ed25519 private
    key (``signing.load_private_key``). Refused with ``AuditTrailBroken`` (exit 6) when the log's tail
    is torn, unsigned, rewritten or signed by another key; nothing is written then."""
    station = check_run_record(record)
    items = [check_image_record(item, i) for i, item in enumerate(images)]
    log = Path(log_path)
    with locked_log(log) as fd:
        head, problems, _ = tail_problems(log, fd, key.public_key(), station)
        if problems:
            raise AuditTrailBroken("; ".join(problems) + f". Nothing was written. A person must look, then run "
                                   f"`mscvision audit repair {log} --key STATION.key --reason TEXT`, which moves "
                                   "those bytes aside and records that it did.")
        return _write_run(log, fd, head, station, key, [("run", record)] + [("image", item) for item in items])


def _write_run(log: Path, fd: int, head: Head, station: str, key, bodies: list[tuple[str, dict]]) -> Appended:
    when = utc_now()
    run_id = new_run_id(when)
    key_b64 = base64.b64encode(raw_public(key.public_key())).decode("ascii")
    lines, prev, seq = [], head.hash, head.size
    for kind, body in bodies:
        rec = make_record(seq, prev, kind, run_id, when, station, key_b64, body)
        lines.append(canonical_json(rec) + b"\n")
        prev, seq = rec["hash"], seq + 1
    data = b"".join(lines)
    log_id = head.log_id or json.loads(lines[0])["hash"][:16]
    write_all(fd, data)
    os.fsync(fd)
    note = checkpoint_note(station, log_id, seq, prev, head.nbytes + len(data), when, key)
    append_line(checkpoints_path(log), checkpoint_line(note))
    return Appended(run_id, head.size, seq, prev, note)


# --- repair after an interrupted write ----------------------------------------------------------------

@dataclass(frozen=True)
class Repaired:
    moved: list[dict]  # what was moved aside: {"file", "from_byte", "bytes", "sha256", "saved_as"}
    accepted_records: int
    appended: Appended


def repair_log(log_path: str | os.PathLike, key, *, reason: str, operator: dict, station_id: str | None = None,
               accept_unsigned: bool = False) -> Repaired | None:
    """After an interrupted append: move the bytes no checkpoint signs (a torn record, a run's records
    whose checkpoint was never written, a torn checkpoint line) into ``LOG.unsigned-TIME.bin`` files,
    cut the log back to its last signed record, and append a ``repair`` record naming what was moved
    (file, offset, length, SHA-256) and why, with a new checkpoint. ``accept_unsigned`` keeps complete,
    correctly chained records after the last checkpoint instead of moving them (the repair record
    counts them: the operator vouches for them). None when there is nothing to repair. Tampering
    (a rewritten tail, another key, a truncated log) is refused: that is evidence, not a crash."""
    if not reason or not reason.strip():
        raise AuditError("a repair needs --reason: what happened and who looked")
    log = Path(log_path)
    if not log.is_file():
        raise AuditError(f"{log}: no such audit log")
    with locked_log(log) as fd:
        station = station_id or _station_of(fd)
        head, problems, extra = tail_problems(log, fd, key.public_key(), check_key_name(station))
        if not problems:
            return None
        signed = head.size
        if accept_unsigned:
            head, extra["log_from"] = _accept_chained(fd, head, extra["log_from"])
        moved = [m for m in (_move_aside(log, fd, extra["log_from"]),
                             _move_aside(checkpoints_path(log), None, extra["checkpoints_from"])) if m]
        body = {"station_id": station, "operator": operator, "reason": reason.strip(), "moved": moved,
                "accepted_unsigned_records": head.size - signed}
        appended = _write_run(log, fd, head, station, key, [("repair", body)])
        return Repaired(moved, head.size - signed, appended)


def _station_of(fd: int) -> str:
    first = os.pread(fd, 1 << 20, 0).split(b"\n", 1)
    if len(first) == 2:
        record, why = record_problem(first[0] + b"\n")
        if not why:
            return record["station"]
    raise AuditError("the log has no readable first record to take the station id from. Fix: pass --station ID")


def _accept_chained(fd: int, head: Head, start: int) -> tuple[Head, int]:
    """The head after the complete records beyond ``start`` that chain from ``head`` (a torn tail and
    anything that does not chain stay to be moved aside)."""
    size, offset, seq, prev = os.fstat(fd).st_size, start, head.size, head.hash
    log_id, station = head.log_id, head.station
    data = os.pread(fd, size - start, start)
    for line in data.split(b"\n")[:-1]:
        record, why = record_problem(line + b"\n")
        if why or record["seq"] != seq or record["prev"] != prev:
            break
        offset, seq, prev = offset + len(line) + 1, seq + 1, record["hash"]
        log_id, station = log_id or record["hash"][:16], station or record["station"]
    return Head(seq, offset, prev, log_id, station), offset


def _move_aside(path: Path, fd: int | None, start: int) -> dict | None:
    """Copy ``path``'s bytes from ``start`` into ``PATH.unsigned-TIME.bin`` (fsynced), then cut them off."""
    from mscvision.core.fileio import atomic_path

    if not path.exists() or path.stat().st_size <= start:
        return None
    own = fd if fd is not None else os.open(path, os.O_RDWR)
    try:
        size = os.fstat(own).st_size
        data = os.pread(own, size - start, start)
        stamp = re.sub(r"[-:.]", "", utc_now())
        saved = path.with_name(f"{path.name}.unsigned-{stamp}.bin")
        with atomic_path(saved) as tmp:
            tmp.write_bytes(data)
        os.ftruncate(own, start)
        os.fsync(own)
    finally:
        if fd is None:
            os.close(own)
    return {"file": path.name, "from_byte": start, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "saved_as": saved.name}


def key_fingerprint_of(record: dict) -> str:
    return fingerprint(public_from_raw(base64.b64decode(record["key"])))
