"""Conformance vectors: prove that this station decodes, preprocesses and runs a model as export did.

A vectors folder (``NAME.vectors/``) holds a few input images, ``vectors.json`` and, per image, the
expected preprocessed tensor as raw little-endian float32 (C, h, w). A station written in another
language can check itself against the same files (models/README.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mscvision.core.errors import ModelError
from mscvision.runtime.inputs import load_input
from mscvision.runtime.model import Model
from mscvision.runtime.station import station_info

VECTORS_FORMAT = "mscvision.vectors"
VECTORS_VERSION = 1
# Stated tolerances: max |difference| allowed per value. The tensor is pure float32 numpy; the
# probabilities also depend on kernels (fp16 and int8 ones vary across CPUs and ORT versions).
TENSOR_TOLERANCE = 1e-5
PROBABILITY_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-3, "int8": 2e-2}


@dataclass
class VerifyReport:
    station: dict
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def default_vectors_dir(model_path: Path) -> Path:
    return model_path.with_name(model_path.stem + ".vectors")


def read_tensor(path: Path, shape: list[int]) -> np.ndarray:
    return np.fromfile(path, dtype="<f4").reshape(shape).astype(np.float32)


def load_vectors(folder: Path) -> dict:
    index = folder / "vectors.json"
    if not index.is_file():
        raise ModelError(f"{folder}: no vectors.json. Fix: pass the NAME.vectors folder written by export.")
    doc = json.loads(index.read_text(encoding="utf-8"))
    if doc.get("format") != VECTORS_FORMAT or doc.get("version") != VECTORS_VERSION:
        raise ModelError(f"{index}: not {VECTORS_FORMAT} version {VECTORS_VERSION}.")
    return doc


def verify_model(model: Model, folder: Path) -> VerifyReport:
    doc = load_vectors(folder)
    report = VerifyReport(station_info(model.threads, model.providers))
    if doc["model_sha256"] != model.sha256:
        report.failures.append(f"the vectors belong to model sha256 {doc['model_sha256'][:12]}…, "
                               f"not to this file ({model.sha256[:12]}…)")
        return report
    tol = doc["tolerances"]
    for case in doc["cases"]:
        _check_case(model, folder, case, tol, report)
    return report


def _check_case(model: Model, folder: Path, case: dict, tol: dict, report: VerifyReport) -> None:
    name = case["image"]
    expected = read_tensor(folder / case["tensor"], case["shape"])
    tensor = load_input(folder / name, model.metadata)
    tensor_diff = float(np.abs(tensor - expected).max())
    problems = [f"tensor differs by {tensor_diff:.2e} > {tol['tensor_max_abs']:.0e}"] \
        if tensor_diff > tol["tensor_max_abs"] else []
    probs = model.predict(expected[None])  # the expected tensor: a preprocessing slip cannot mask a runtime one
    worst = 0.0
    for task in model.metadata.tasks:
        want = np.asarray(case["probabilities"][task.name], np.float32)
        got = probs[task.name][0]
        worst = max(worst, float(np.abs(got - want).max()))
        if int(got.argmax()) != int(want.argmax()):
            problems.append(f"{task.name}: top class {task.classes[int(got.argmax())]} "
                            f"!= expected {task.classes[int(want.argmax())]}")
    if worst > tol["probability_max_abs"]:
        problems.append(f"probabilities differ by {worst:.2e} > {tol['probability_max_abs']:.0e}")
    status = "FAIL" if problems else "ok"
    report.lines.append(f"{status:4} {name}: tensor max|Δ| {tensor_diff:.1e}, probability max|Δ| {worst:.1e}"
                        + (f" — {'; '.join(problems)}" if problems else ""))
    report.failures += [f"{name}: {p}" for p in problems]
