"""Atomic writes: an output is either complete or absent, never half-written."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, keep_partial: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    The temporary file is named ``.NAME.partial-PID.SUFFIX``, so one left behind by a killed process
    (SIGKILL, power loss) says what it is and whose it was. Before the rename the data and then the
    folder entry are fsynced: after a crash the target is the old file or the complete new one.
    A replaced file keeps its permission mode. On an exception the temporary file is removed, except
    that ``keep_partial`` keeps it (when not empty) for an ``Exception`` — the rows computed so far —
    while a deliberate stop (Ctrl-C, SIGTERM raised as ``SystemExit``) always cleans up.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_partial(path)
    keep = False
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
        _fsync(path.parent)
    except Exception:
        keep = keep_partial and tmp.exists() and tmp.stat().st_size > 0
        raise
    finally:
        if not keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def partial_name(path: Path, attempt: int = 0) -> Path:
    """The temporary name of ``path`` while this process writes it."""
    tag = f"{os.getpid()}-{attempt}" if attempt else str(os.getpid())
    return path.with_name(f".{path.name}.partial-{tag}{path.suffix}")


def _create_partial(path: Path) -> Path:
    for attempt in range(100):  # a leftover of a killed process that had our pid is never overwritten
        tmp = partial_name(path, attempt)
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{partial_name(path)}: 100 leftover partial files beside {path}; remove them")


def _mode_for(path: Path) -> int:
    """The mode of the file being replaced, else what a plain ``open`` would give (0666 less umask)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return 0o666 & ~_umask()
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else 0o666 & ~_umask()


def _fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to the disk (fsync works on any open descriptor)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some file systems (and Windows) cannot open or fsync a folder; the data is synced
        if not path.is_dir():
            raise


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold ``.NAME.lock`` beside ``path`` so that two runs never write one output at once.

    Non-blocking: a second run is refused (``LockedError`` names the holder's pid), never queued and
    never silently overwriting the first run's results. The lock is the kernel's (``flock``), so it
    vanishes with a killed holder; the lock file is removed by its holder on the way out.
    """
    lock = Path(path).with_name(f".{Path(path).name}.lock")
    fd = _acquire(lock)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # Windows cannot unlink an open file: it stays, harmless
            os.unlink(lock)  # while still holding it: see _acquire for the race this closes
        os.close(fd)


class LockedError(OSError):
    """The lock cannot be had: another process holds it, or the file system has no locks."""


def _acquire(lock: Path) -> int:
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:  # another user's lock file in a shared folder: flock works read-only too
            fd = os.open(lock, os.O_RDONLY)
        if not _try_lock(fd):
            try:
                holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            except OSError:  # Windows locks are mandatory: the holder's pid cannot be read
                holder = "unknown"
            os.close(fd)
            raise LockedError(f"{lock} is held by another process (pid {holder})")
        # the holder before us may have unlinked the file between our open and our flock: then we
        # locked an orphan that a third process cannot see; retry on the file now at that name
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            with contextlib.suppress(OSError):  # the pid is for the message of a run we keep out
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows (untested here): a byte-range lock, also released when the holder dies
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:  # ENOLCK, EOPNOTSUPP: some network / FUSE file systems
        os.close(fd)
        raise LockedError(f"the file system cannot lock files ({exc.strerror}), so a second run could not "
                          "be kept out; write to a local disk") from None


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
