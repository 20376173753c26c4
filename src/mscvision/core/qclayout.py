"""Which well and lot each image of a QC run belongs to: a layout CSV, a filename pattern, or neither.

A layout CSV has the columns ``path,well,lot`` (paths relative to the CSV's folder, or absolute);
a pattern is a regular expression with the named groups ``well`` and (optional) ``lot``, matched
against each file's name. Without either, every image is its own well of one lot named ``lot``.

Nothing is dropped silently: a layout row naming a missing file stays in the run as an image that
could not be read (its well is then judged REVIEW, never PASS), and a file the pattern does not
match is refused by name: which well it belongs to is not something to guess.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mscvision.core.errors import ConfigError, DataError

LAYOUT_COLUMNS = ("path", "well", "lot")
DEFAULT_LOT = "lot"


@dataclass(frozen=True)
class Placement:
    path: str
    well: str
    lot: str


def read_layout(csv_path: str | os.PathLike) -> list[Placement]:
    """The layout CSV's rows in file order; ``DataError`` naming the file, row and column otherwise."""
    path = Path(csv_path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in LAYOUT_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: the layout CSV lacks the column(s) {', '.join(missing)} "
                                f"(it needs {','.join(LAYOUT_COLUMNS)})")
            rows = list(reader)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the layout CSV ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: the layout CSV is not UTF-8 text ({exc.reason})") from exc
    placements, seen = [], {}
    for line, row in enumerate(rows, start=2):
        values = {c: (row.get(c) or "").strip() for c in LAYOUT_COLUMNS}
        empty = [c for c, v in values.items() if not v]
        if empty:
            raise DataError(f"{path}, line {line}: empty {', '.join(empty)}; every row names a file, its well "
                            "and its lot")
        image = values["path"] if os.path.isabs(values["path"]) else str(path.parent / values["path"])
        if image in seen:
            raise DataError(f"{path}, line {line}: {values['path']} is listed twice (first on line {seen[image]}); "
                            "an image belongs to one well")
        seen[image] = line
        placements.append(Placement(image, values["well"], values["lot"]))
    if not placements:
        raise DataError(f"{path}: the layout CSV lists no image")
    return placements


def compile_pattern(pattern: str) -> re.Pattern:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"--pattern {pattern!r}: not a regular expression ({exc})") from exc
    if "well" not in compiled.groupindex:
        raise ConfigError(f"--pattern {pattern!r}: needs a named group (?P<well>...) (and optionally (?P<lot>...))")
    return compiled


def place_by_pattern(paths: list[str], pattern: str) -> list[Placement]:
    """Well (and lot) from each file name by the pattern; ``DataError`` naming the first that does not match."""
    compiled = compile_pattern(pattern)
    out = []
    for p in paths:
        match = compiled.search(os.path.basename(p))
        if match is None:
            raise DataError(f"{p}: its name does not match --pattern {pattern!r}, so its well is unknown. Fix: "
                            "correct the pattern, or give a layout CSV (--layout)")
        lot = match.groupdict().get("lot") or DEFAULT_LOT
        out.append(Placement(p, match.group("well"), lot))
    return out


def place_each_alone(paths: list[str]) -> list[Placement]:
    """No layout: each image is its own well (named after the file), all in one lot."""
    return [Placement(p, Path(p).stem, DEFAULT_LOT) for p in paths]
