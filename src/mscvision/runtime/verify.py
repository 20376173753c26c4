"""Conformance vectors: prove that this station decodes, preprocesses and runs a model as export did.

A vectors folder (``NAME.vectors/``) holds a few input images, ``vectors.json`` and, per image, the
expected preprocessed tensor as raw little-endian float32 (C, h, w); for a model with a learned OOD
score each case also holds its expected ``ood_score``, checked against ``conformance.ood_max_abs``.
A station written in another language can check itself against the same files (models/README.md).

The vectors folder is editable; the model file is hashed. So what decides PASS comes from the model:
the tolerances from its metadata (``conformance``; per-precision defaults for models exported
before it was recorded), never from ``vectors.json``. A check that cannot be made (no cases, a
truncated tensor, a missing image, a malformed entry) is a FAIL, never a silent pass.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mscvision.core.errors import MscvisionError, ModelError
from mscvision.runtime.inputs import load_input
from mscvision.runtime.model import Model
from mscvision.runtime.station import station_info

VECTORS_FORMAT = "mscvision.vectors"
VECTORS_VERSION = 1
# Default tolerances, for models whose metadata predates `conformance`: max |difference| allowed per
# value. The tensor is pure float32 numpy; the probabilities also depend on kernels (fp16 and int8
# ones vary across CPUs and ORT versions).
TENSOR_TOLERANCE = 1e-5
PROBABILITY_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-3, "int8": 2e-2}


class VectorError(ValueError):
    """One vector (or the whole vectors file) cannot be checked: a FAIL, with this reason."""


@dataclass(frozen=True)
class Tolerances:
    tensor_max_abs: float
    probability_max_abs: float
    source: str  # where they come from, for the report
    ood_max_abs: float | None = None  # the learned OOD score's; None for a model without one


@dataclass
class VerifyReport:
    station: dict
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cases: int = 0
    probability_max_abs: float = 0.0  # the worst |Δp| over the cases checked

    @property
    def passed(self) -> bool:
        return self.cases > 0 and not self.failures


def default_vectors_dir(model_path: Path) -> Path:
    return model_path.with_name(model_path.stem + ".vectors")


def model_tolerances(model: Model) -> Tolerances:
    """The model's own stated tolerances (validated at load), else the defaults for its precision."""
    stated = model.metadata.raw.get("conformance")
    if stated:
        ood = stated.get("ood_max_abs")  # export writes it with the score; a case fails without it
        return Tolerances(float(stated["tensor_max_abs"]), float(stated["probability_max_abs"]),
                          "the model's metadata", float(ood) if ood is not None else None)
    precision = model.metadata.precision
    if precision not in PROBABILITY_TOLERANCE:
        raise ModelError(f"{model.path}: precision {precision!r} has no stated conformance tolerance.")
    return Tolerances(TENSOR_TOLERANCE, PROBABILITY_TOLERANCE[precision], f"the defaults for {precision}")


def read_tensor(path: Path, shape: list[int]) -> np.ndarray:
    """A raw little-endian float32 tensor of exactly ``shape``; ``VectorError`` on a wrong byte count."""
    expected = 4 * math.prod(shape)
    size = path.stat().st_size
    if size != expected:
        raise VectorError(f"{path.name} holds {size} bytes; shape {list(shape)} float32 needs {expected}")
    return np.fromfile(path, dtype="<f4").reshape(shape).astype(np.float32)


def load_vectors(folder: Path) -> dict:
    """``vectors.json`` parsed and checked for its top-level shape; ``VectorError`` when malformed."""
    index = folder / "vectors.json"
    if not index.is_file():
        raise ModelError(f"{folder}: no vectors.json. Fix: pass the NAME.vectors folder written by export.")
    try:
        doc = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VectorError(f"{index} cannot be read as JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != VECTORS_FORMAT or doc.get("version") != VECTORS_VERSION:
        raise VectorError(f"{index} is not {VECTORS_FORMAT} version {VECTORS_VERSION}")
    if not isinstance(doc.get("model_sha256"), str) or not isinstance(doc.get("cases"), list):
        raise VectorError(f"{index} lacks model_sha256 (a string) or cases (a list)")
    return doc


def verify_model(model: Model, folder: Path) -> VerifyReport:
    report = VerifyReport(station_info(model.threads, model.providers))
    tol = model_tolerances(model)
    try:
        doc = load_vectors(folder)
    except VectorError as exc:
        report.failures.append(str(exc))
        return report
    if doc["model_sha256"] != model.sha256:
        report.failures.append(f"the vectors belong to model sha256 {doc['model_sha256'][:12]}…, "
                               f"not to this file ({model.sha256[:12]}…)")
        return report
    report.notes += _ignored_tolerances(doc.get("tolerances"), tol)
    if not doc["cases"]:
        report.failures.append(f"{folder}: vectors.json lists no cases, so nothing was checked")
    distinct, wanted = _distinct_cases(folder, doc["cases"]), _min_cases(model)
    if doc["cases"] and distinct < wanted:
        report.failures.append(f"{folder}: {distinct} distinct case(s) (by image and tensor contents), the model "
                               f"asks for at least {wanted} (conformance.min_cases): the folder was thinned or "
                               "is not the one export wrote")
    for i, case in enumerate(doc["cases"]):
        report.cases += 1
        try:
            _check_case(model, folder, case, tol, report)
        except (ValueError, MscvisionError, OSError) as exc:  # this case cannot be checked: it fails
            name = case.get("image") if isinstance(case, dict) and isinstance(case.get("image"), str) else f"case {i}"
            report.lines.append(f"FAIL {name}: cannot be checked — {exc}")
            report.failures.append(f"{name}: cannot be checked — {exc}")
    return report


def _min_cases(model: Model) -> int:
    """The vectors export wrote (``conformance.min_cases``, validated at load); 1 for older models."""
    return int((model.metadata.raw.get("conformance") or {}).get("min_cases", 1))


def _distinct_cases(folder: Path, cases: list) -> int:
    """Cases whose image and tensor both differ from every other case's: by file contents, so that
    copies of one image under new names count once; by name where a file cannot be read (that case
    fails on its own, and is not counted twice)."""
    images, tensors = set(), set()
    for case in cases:
        if isinstance(case, dict):
            images.add(_identity(folder, case.get("image")))
            tensors.add(_identity(folder, case.get("tensor")))
    return min(len(images), len(tensors))


def _identity(folder: Path, name: object) -> str:
    try:
        return "sha256:" + hashlib.sha256(inside(folder, name).read_bytes()).hexdigest()
    except (OSError, TypeError, VectorError):
        return "name:" + repr(name)


def _ignored_tolerances(stated: object, tol: Tolerances) -> list[str]:
    """vectors.json's own tolerance numbers decide nothing; say so when they are looser than the model's."""
    if not isinstance(stated, dict):
        return []
    looser = [f"{key} {stated[key]!r} > {mine:.0e}" for key, mine in
              (("tensor_max_abs", tol.tensor_max_abs), ("probability_max_abs", tol.probability_max_abs))
              if isinstance(stated.get(key), (int, float)) and not stated[key] <= mine]
    return [f"vectors.json states looser tolerances ({', '.join(looser)}); ignored: the model's apply"] if looser else []


def _check_case(model: Model, folder: Path, case: object, tol: Tolerances, report: VerifyReport) -> None:
    if not isinstance(case, dict):
        raise VectorError(f"the case is {type(case).__name__}, not an object")
    name = _field(case, "image", str)
    shape = _field(case, "shape", list)
    if tuple(shape) != model.metadata.input_shape:
        raise VectorError(f"shape {shape} is not the model's input {list(model.metadata.input_shape)}")
    expected = read_tensor(inside(folder, _field(case, "tensor", str)), shape)
    if not np.isfinite(expected).all():
        raise VectorError("the expected tensor holds NaN or Inf")
    tensor = load_input(inside(folder, name), model.metadata)
    tensor_diff = float(np.abs(tensor - expected).max())
    problems = [] if tensor_diff <= tol.tensor_max_abs else \
        [f"tensor differs by {tensor_diff:.2e} > {tol.tensor_max_abs:.0e}"]
    # the expected tensor: a preprocessing slip cannot mask a runtime one
    probs, score = model.predict_with_ood(expected[None])
    worst = 0.0
    for task in model.metadata.tasks:
        task_worst, task_problems = _compare_task(task, probs[task.name][0], case)
        worst = max(worst, task_worst)
        problems += task_problems
    report.probability_max_abs = max(report.probability_max_abs, worst)
    if not worst <= tol.probability_max_abs:
        problems.append(f"probabilities differ by {worst:.2e} > {tol.probability_max_abs:.0e}")
    score_note = ""
    if score is not None:
        score_diff = _compare_score(score[0], case, tol)
        score_note = f", OOD score |Δ| {score_diff:.1e}"
        if not score_diff <= tol.ood_max_abs:
            problems.append(f"OOD score differs by {score_diff:.2e} > {tol.ood_max_abs:.1e}")
    status = "FAIL" if problems else "ok"
    report.lines.append(f"{status:4} {name}: tensor max|Δ| {tensor_diff:.1e}, probability max|Δ| {worst:.1e}"
                        + score_note + (f" — {'; '.join(problems)}" if problems else ""))
    report.failures += [f"{name}: {p}" for p in problems]


def _compare_task(task, got: np.ndarray, case: dict) -> tuple[float, list[str]]:
    """(max |Δp|, problems) for one task: probabilities, top class, and the recorded label."""
    want = _field(case, "probabilities", dict).get(task.name)
    label = _field(case, "labels", dict).get(task.name)
    if not isinstance(want, list) or len(want) != len(task.classes) or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in want):
        raise VectorError(f"probabilities.{task.name} is not a list of {len(task.classes)} numbers")
    if label not in task.classes:
        raise VectorError(f"labels.{task.name} {label!r} is not one of {list(task.classes)}")
    want = np.asarray(want, np.float32)
    if not np.isfinite(got).all():
        return math.inf, [f"{task.name}: the model output holds NaN or Inf"]
    worst = float(np.abs(got - want).max())
    problems = []
    top, expected_top = task.classes[int(got.argmax())], task.classes[int(want.argmax())]
    if top != expected_top:
        problems.append(f"{task.name}: top class {top} != expected {expected_top}")
    if top != label:
        problems.append(f"{task.name}: label {top} != recorded label {label}")
    return worst, problems


def _compare_score(got: float, case: dict, tol: Tolerances) -> float:
    """|Δ| of the learned OOD score against the case's ``ood_score``: a model with a score needs one per
    case (export writes it), and a tolerance in its metadata; either missing makes the case unverifiable."""
    want = case.get("ood_score")
    if not isinstance(want, (int, float)) or isinstance(want, bool):
        raise VectorError("'ood_score' is missing or not a number, but the model has a learned OOD score")
    if tol.ood_max_abs is None:
        raise VectorError("the model has a learned OOD score but states no conformance.ood_max_abs")
    diff = abs(float(got) - float(want))
    return diff if math.isfinite(diff) else math.inf


def _field(case: dict, key: str, kind: type):
    value = case.get(key)
    if not isinstance(value, kind):
        raise VectorError(f"{key!r} is missing or not a {kind.__name__}")
    return value


def inside(folder: Path, name: str) -> Path:
    """``folder / name``, refused unless it stays inside ``folder`` (no absolute path, ``..`` or escaping link)."""
    relative = Path(name)
    if not name or relative.is_absolute() or ".." in relative.parts:
        raise VectorError(f"path {name!r} points outside the vectors folder")
    path = folder / relative
    root = folder.resolve()
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise VectorError(f"path {name!r} leads outside the vectors folder (to {resolved})")
    return path
