"""The QC acceptance spec (``configs/qc/*.yaml``): what a well and a lot must meet, validated on load.

A spec is the quality unit's document, so a mistake in it must stop the station with the key named
and the fix, never be guessed around: unknown keys, wrong types, values out of range, criteria the
grammar does not read, another format version, a key given twice (PyYAML would silently keep the
last one) all raise ``ConfigError``. ``load_spec`` hashes the very bytes it parses (the audit record
and the approval check name that SHA-256). ``spec_problems_for_model`` then checks the criteria
against the model's tasks and classes (the station refuses before reading an image).

Criteria, one string each (``>=``/``<=``, or ``≥``/``≤``)::

    fraction TASK=CLASS >= LIMIT   the fraction of usable tiles whose dominant state is CLASS (0..1)
    flagged <= LIMIT               flagged by the OOD gate, of the evaluated (non-background) tiles
    abstained <= LIMIT             usable tiles that abstained on a task (label "review"), of usable
    tiles >= N                     usable tiles (the tiles every fraction is of), an integer >= 1

The ``approval`` section is carried as parsed (``core/approval.py`` reads it) and validated here
with ``approval_models`` when present; it stays optional at load so that a spec can be drafted and
checked before a model is approved (the station refuses at start-up without it).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from mscvision.core.errors import ConfigError

FORMAT = "mscvision.qc-spec"
VERSION = 1
UNITS = ("tiles",)  # the only unit today: a fraction is of usable tissue tiles, by dominant state
KINDS = ("fraction", "flagged", "abstained", "tiles")
TOP_KEYS = ("format", "name", "unit", "confidence", "tiling", "input", "quantification", "criteria",
            "evaluation_margin", "approval")
TILING_DEFAULTS = {"overlap_px": 0, "min_foreground": 0.05, "block_tiles": 4}
CRITERION_FORMS = ("fraction TASK=CLASS >= LIMIT", "fraction TASK=CLASS <= LIMIT", "flagged <= LIMIT",
                   "abstained <= LIMIT", "tiles >= N")

_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_NAME = r"([^\s=<>≤≥]+)"
_FRACTION = re.compile(rf"fraction\s+{_NAME}\s*=\s*{_NAME}\s*(>=|<=)\s*{_NUMBER}")
_QUALITY = re.compile(rf"(flagged|abstained|tiles)\s*(>=|<=)\s*{_NUMBER}")


@dataclass(frozen=True)
class Criterion:
    kind: str          # fraction | flagged | abstained | tiles
    task: str | None   # fraction criteria only
    cls: str | None
    op: str            # ">=" | "<="
    limit: float       # a fraction in [0, 1]; for tiles an integer count
    text: str          # as the spec writes it

    def met_by(self, value: float) -> bool:
        return value >= self.limit if self.op == ">=" else value <= self.limit

    @property
    def limit_text(self) -> str:
        """The limit as the spec writes it (0.90 stays 0.90)."""
        return re.search(rf"{_NUMBER}\s*$", self.text).group(1)


@dataclass(frozen=True)
class Tiling:
    overlap_px: int
    min_foreground: float
    block_tiles: int


@dataclass(frozen=True)
class QcSpec:
    path: str
    sha256: str                      # of the bytes parsed
    name: str
    unit: str
    confidence: float
    tiling: Tiling
    pixel_size_um: float | None      # input.pixel_size_um: declared for files whose metadata has none
    quantification: str              # "model", or the resolved path of a quantification JSON
    criteria: tuple[Criterion, ...]
    evaluation_margin: float
    approval: dict | None            # as parsed; None when the spec has none (the station refuses then)
    raw: dict

    @property
    def fraction_criteria(self) -> tuple[Criterion, ...]:
        return tuple(c for c in self.criteria if c.kind == "fraction")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping key given twice (PyYAML keeps the last one without a word)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice (first on line "
                                  f"{seen[key] + 1}); a spec states each key once")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_spec(path: str | Path) -> QcSpec:
    """Read and validate a QC spec; ``ConfigError`` naming the key and the fix for anything wrong."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the QC spec ({exc.strerror or exc})") from None
    where = str(path)
    try:
        raw = yaml.load(data.decode("utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not UTF-8 text; a QC spec is a YAML file") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{where}: not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a QC spec is a YAML mapping (format, name, criteria, ...), got "
                          f"{type(raw).__name__}")
    return _parse(raw, path, hashlib.sha256(data).hexdigest())


def _parse(raw: dict, path: Path, sha256: str) -> QcSpec:
    where = str(path)
    _check_keys(raw, TOP_KEYS, where, "")
    _check_format(raw.get("format"), where)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: name: required, the spec's title as text (e.g. name: MSC in-process identity)")
    unit = raw.get("unit", "tiles")
    if unit not in UNITS:
        raise ConfigError(f"{where}: unit: {unit!r} is not supported; the only unit is 'tiles' (a fraction is of "
                          "usable tissue tiles, by each tile's dominant state)")
    confidence = _number(raw, "confidence", 0.95, where)
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"{where}: confidence: {confidence} must lie strictly between 0 and 1 (e.g. 0.95)")
    margin = _number(raw, "evaluation_margin", 0.02, where)
    if not 0.0 <= margin < 1.0:
        raise ConfigError(f"{where}: evaluation_margin: {margin} must lie in [0, 1) (e.g. 0.02)")
    criteria = _criteria(raw.get("criteria"), where)
    approval = raw.get("approval")
    if approval is not None:
        from mscvision.core.approval import approval_models  # names a bad approval key at load

        approval_models(raw, where)
    return QcSpec(path=where, sha256=sha256, name=name.strip(), unit=unit, confidence=confidence,
                  tiling=_tiling(raw.get("tiling"), where), pixel_size_um=_pixel_size(raw.get("input"), where),
                  quantification=_quantification(raw.get("quantification", "model"), path),
                  criteria=criteria, evaluation_margin=margin, approval=approval, raw=raw)


def _check_keys(section: Mapping, known: tuple[str, ...], where: str, prefix: str) -> None:
    unknown = sorted(str(k) for k in set(section) - set(known))
    if unknown:
        raise ConfigError(f"{where}: {prefix}{unknown[0]}: unknown key (known{' in ' + prefix[:-1] if prefix else ''}: "
                          f"{', '.join(known)})")


def _check_format(value: object, where: str) -> None:
    expected = f"{FORMAT}/{VERSION}"
    if value is None:
        raise ConfigError(f"{where}: format: missing; a QC spec starts with `format: {expected}`")
    match = re.fullmatch(rf"{re.escape(FORMAT)}/(\S+)", str(value))
    if not match:
        raise ConfigError(f"{where}: format: {value!r} is not a QC spec format; write `format: {expected}`")
    if match.group(1) != str(VERSION):
        raise ConfigError(f"{where}: format: version {match.group(1)} is not supported; this station reads "
                          f"{expected} (upgrade the station, or write the spec in version {VERSION})")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(section: Mapping, key: str, default: float, where: str, prefix: str = "") -> float:
    value = section.get(key, default)
    if not _is_number(value):
        hint = " (YAML reads 1e-3 as text: write 0.001)" if isinstance(value, str) else ""
        raise ConfigError(f"{where}: {prefix}{key}: {value!r} is not a number{hint}")
    return float(value)


def _integer(section: Mapping, key: str, default: int, where: str, prefix: str, minimum: int) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: {prefix}{key}: {value!r} must be a whole number >= {minimum}")
    return value


def _tiling(section: object, where: str) -> Tiling:
    section = {} if section is None else section
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where}: tiling: a mapping {{overlap_px: 0, min_foreground: 0.05, block_tiles: 4}}")
    _check_keys(section, tuple(TILING_DEFAULTS), where, "tiling.")
    overlap = _integer(section, "overlap_px", TILING_DEFAULTS["overlap_px"], where, "tiling.", 0)
    block = _integer(section, "block_tiles", TILING_DEFAULTS["block_tiles"], where, "tiling.", 1)
    foreground = _number(section, "min_foreground", TILING_DEFAULTS["min_foreground"], where, "tiling.")
    if not 0.0 <= foreground < 1.0:
        raise ConfigError(f"{where}: tiling.min_foreground: {foreground} must lie in [0, 1): the fraction of a tile's "
                          "pixels that must be tissue for the model to run on it")
    return Tiling(overlap, foreground, block)


def _pixel_size(section: object, where: str) -> float | None:
    section = {} if section is None else section
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where}: input: a mapping {{pixel_size_um: null}}")
    _check_keys(section, ("pixel_size_um",), where, "input.")
    value = section.get("pixel_size_um")
    if value is None:
        return None
    if not _is_number(value) or value <= 0:
        raise ConfigError(f"{where}: input.pixel_size_um: {value!r} must be a positive number of micrometres per "
                          "pixel, or null (files must then state their own)")
    return float(value)


def _quantification(value: object, path: Path) -> str:
    if value == "model":
        return "model"
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}: quantification: {value!r}: write 'model' (the model's own val confusions) or "
                          "the path, relative to the spec, of a quantification JSON")
    resolved = (path.parent / value).resolve()
    if not resolved.is_file():
        raise ConfigError(f"{path}: quantification: {value!r} is not a file (looked for {resolved}); fix the path "
                          "(relative to the spec) or write 'model'")
    return str(resolved)


def _criteria(value: object, where: str) -> tuple[Criterion, ...]:
    forms = "; ".join(CRITERION_FORMS)
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: criteria: a list of at least one criterion, each a string of one of the forms: "
                          f"{forms}")
    parsed = tuple(parse_criterion(text, f"{where}: criteria[{i}]") for i, text in enumerate(value))
    texts = [c.text for c in parsed]
    for i, text in enumerate(texts):
        if text in texts[:i]:
            raise ConfigError(f"{where}: criteria[{i}]: {text!r} is listed twice; state each criterion once")
    return parsed


def parse_criterion(text: object, where: str = "criterion") -> Criterion:
    """One criterion string (module docstring), or ``ConfigError`` naming the accepted forms."""
    forms = "; ".join(CRITERION_FORMS)
    if not isinstance(text, str):
        raise ConfigError(f"{where}: {text!r} is not a string; write it as one of: {forms}")
    clean = " ".join(text.split()).replace("≥", ">=").replace("≤", "<=")
    fraction, quality = _FRACTION.fullmatch(clean), _QUALITY.fullmatch(clean)
    if fraction:
        task, cls, op, number = fraction.groups()
        limit = float(number)
        if not 0.0 <= limit <= 1.0:
            raise ConfigError(f"{where}: {text!r}: the limit {number} is a fraction and must lie in [0, 1]")
        return Criterion("fraction", task, cls, op, limit, text.strip())
    if not quality:
        raise ConfigError(f"{where}: {text!r} is not a criterion this station reads; the accepted forms are: {forms}")
    kind, op, number = quality.groups()
    expected = ">=" if kind == "tiles" else "<="
    if op != expected:
        why = ("a minimum number of usable tiles" if kind == "tiles" else
               f"a maximum share of {kind} tiles (too many send the verdict to review)")
        raise ConfigError(f"{where}: {text!r}: {kind} takes '{expected}' ({why}); write '{kind} {expected} "
                          f"{number}'")
    limit = float(number)
    if kind == "tiles":
        if limit != int(limit) or limit < 1:
            raise ConfigError(f"{where}: {text!r}: the number of tiles must be a whole number >= 1")
    elif not 0.0 <= limit <= 1.0:
        raise ConfigError(f"{where}: {text!r}: the limit {number} is a fraction and must lie in [0, 1]")
    return Criterion(kind, None, None, op, limit, text.strip())


def spec_problems_for_model(spec: QcSpec, tasks: Mapping[str, list[str]]) -> list[str]:
    """What the spec's criteria name that the model lacks (tasks: name -> classes in output order);
    empty when every criterion can be judged with this model."""
    problems = []
    for c in spec.fraction_criteria:
        if c.task not in tasks:
            problems.append(f"{spec.path}: criterion {c.text!r}: the model has no task {c.task!r} (its tasks: "
                            f"{', '.join(tasks) or 'none'}); fix the criterion or run a model that has it")
        elif c.cls not in tasks[c.task]:
            problems.append(f"{spec.path}: criterion {c.text!r}: task {c.task!r} has no class {c.cls!r} (its "
                            f"classes: {', '.join(tasks[c.task])}); fix the class name (spelling and case count)")
    return problems
