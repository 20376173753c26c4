"""Evaluate an exported model on labelled images exactly as a station runs it (``mscvision evaluate``).

The rows are the station's own: ``predict.predict_files`` on the image files, untouched (status,
reason, labels, probabilities; error rows for unreadable files, ``review`` below the threshold).
The figures need what the station does not emit, the ``logits.TASK`` outputs, so the images that got
probabilities are run once more through the same ``inputs.prepare_input`` and ``Model.outputs``:
no second preprocessing path, and the two passes are checked to agree (a provider that answers
differently for the same image would otherwise go unnoticed).

Per task: ``classification_metrics`` with group-bootstrap intervals (``core.intervals``),
calibration of the probabilities the model outputs and, for a model without test-time
augmentation, of softmax(logits) (the probabilities before the temperature), abstention at the
deployed threshold against the model's certificate, the oracle coverage, the risk-coverage
curve, accuracy per group (worst first) and the most confident errors. Bad labels and unreadable
images are counted and reported, never silently dropped.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mscvision import __version__
from mscvision.core.errors import DataError, ModelError
from mscvision.core.fileio import sha256_file
from mscvision.core.intervals import group_bootstrap
from mscvision.core.manifest import manifest_from_csv, manifest_from_folders
from mscvision.core.metrics import classification_metrics
from mscvision.runtime.inputs import DecodeBudget, decode_budget, prepare_input
from mscvision.runtime.metadata import TaskInfo, logits_output, probability_output
from mscvision.runtime.model import Model
from mscvision.runtime.predict import NOTES, predict_files, prediction_columns

SCHEMA = "mscvision.evaluation/1"
ALL_SPLITS = "all"
LABEL_COLUMN = "label"  # a one-task model's labels may sit in a plain `label` column (the MitoCheck manifest)
DEFAULT_TARGET_ACCURACY = 0.99  # for the oracle coverage of a model that states no target (older models)
PASS_AGREEMENT = 1e-4  # max |Δp| between the station's rows and the second pass (float32 batch rounding)


@dataclass(frozen=True)
class LabelledData:
    """The labelled images to evaluate on, read from a manifest, a run's split.csv or a folder tree."""

    source: Path  # the CSV read, or the folder tree
    kind: str  # "manifest" (a CSV) or "folders"
    split: str | None  # the rows kept by their split column; None: the CSV has none
    paths: tuple[str, ...]
    groups: tuple[str, ...]
    has_groups: bool  # False: every image is its own group (no group column, or a folder tree)
    labels: dict[str, tuple[str, ...]]  # model task -> the true label per row ("" = unknown)
    columns: dict[str, str]  # model task -> the column it was read from
    sha256: str | None  # of the CSV; None for a folder tree
    notes: tuple[str, ...] = ()


@dataclass
class Evaluation:
    metrics: dict  # metrics.json
    rows: list[dict]  # predictions.csv: the station's rows plus the true labels and the group
    columns: list[str]
    problems: int  # error rows + rows with a label the model does not know: exit 3 when > 0
    extra: dict = field(default_factory=dict)  # what the report needs beyond metrics.json


def load_labelled_data(data: str | Path, tasks: tuple[TaskInfo, ...], split: str | None = None) -> LabelledData:
    """``data``: a manifest CSV (or a folder holding ``manifest.csv``), a run's ``split.csv``, or a
    class-per-folder tree (one task). ``tasks``: the model's tasks to evaluate. ``split``: a split
    name or ``all``; required when the CSV has a ``split`` column, so that training rows are never
    scored by accident. ``DataError`` (exit 2) names the file and the fix."""
    path = Path(data)
    if path.is_dir() and not (path / "manifest.csv").is_file():
        return _folder_tree(path, tasks, split)
    csv_path = path / "manifest.csv" if path.is_dir() else path
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: no such manifest. Fix: pass a manifest.csv, a run's split.csv (with "
                        "--split test) or a folder of class sub-folders.")
    header = _header(csv_path)
    columns = task_columns(csv_path, header, tasks)
    keep = _split_to_keep(csv_path, header, split)
    manifest, _ = manifest_from_csv(csv_path, list(dict.fromkeys(columns.values())), check_files=False, split=keep)
    notes = [] if manifest.has_groups else [f"{csv_path.name} has no group column: every image counts as its own "
                                            "group, so the intervals assume independent images"]
    missing = [t.name for t in tasks if t.name not in columns]
    if missing:
        notes.append(f"not evaluated (no column in {csv_path.name}): {', '.join(missing)}")
    return LabelledData(csv_path, "manifest", split if "split" in header else None,
                        tuple(str(p) for p in manifest.paths), manifest.groups, manifest.has_groups,
                        {task: manifest.labels[column] for task, column in columns.items()}, columns,
                        sha256_file(csv_path), tuple(notes))


def _folder_tree(root: Path, tasks: tuple[TaskInfo, ...], split: str | None) -> LabelledData:
    if len(tasks) != 1:
        raise DataError(f"{root}: a class-per-folder tree holds the labels of one task, but the model has "
                        f"{len(tasks)} ({', '.join(t.name for t in tasks)}). Fix: pass --task NAME, or a manifest.csv "
                        "with one column per task.")
    if split not in (None, ALL_SPLITS):
        raise DataError(f"{root}: a class-per-folder tree has no split column, so --split {split} selects nothing. "
                        "Fix: omit --split.")
    manifest = manifest_from_folders(root, tasks[0].name)
    return LabelledData(root, "folders", None, tuple(str(p) for p in manifest.paths), manifest.groups, False,
                        {tasks[0].name: manifest.labels[tasks[0].name]}, {tasks[0].name: "(folder name)"}, None,
                        ("a class-per-folder tree has no groups: every image counts as its own group, so the "
                         "intervals assume independent images",))


def _header(csv_path: Path) -> list[str]:
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        return next(csv.reader(f), [])


def task_columns(csv_path: Path, header: list[str], tasks: tuple[TaskInfo, ...]) -> dict[str, str]:
    """Task -> column: the column named like the task; for a one-task model also ``label``."""
    columns = {t.name: t.name for t in tasks if t.name in header}
    if not columns and len(tasks) == 1 and LABEL_COLUMN in header:
        columns = {tasks[0].name: LABEL_COLUMN}
    if not columns:
        names = ", ".join(t.name for t in tasks)
        also = f" (or {LABEL_COLUMN!r}, for a one-task model)" if len(tasks) == 1 else ""
        raise DataError(f"{csv_path}: none of the tasks evaluated ({names}) is a column; it has {header}. Fix: name "
                        f"each label column after its task{also}, or pass --task with a task that has one.")
    return columns


def _split_to_keep(csv_path: Path, header: list[str], split: str | None) -> str | None:
    if "split" not in header:
        if split not in (None, ALL_SPLITS):
            raise DataError(f"{csv_path}: has no split column, so --split {split} selects nothing. Fix: omit --split, "
                            "or pass the run's split.csv.")
        return None
    if split is None:
        raise DataError(f"{csv_path}: has a split column; scoring every row would include the training images. "
                        f"Fix: pass --split test (the held-out groups), or --split {ALL_SPLITS} to score every row.")
    return None if split == ALL_SPLITS else split


def evaluate_model(model: Model, data: LabelledData, *, batch_size: int = 32, workers: int = 2,
                   budget: DecodeBudget | None = None, n_boot: int = 1000, seed: int = 0,
                   n_errors: int = 16) -> Evaluation:
    """The station's rows for every image, then the figures per task (see the module docstring)."""
    budget = budget or decode_budget()
    rows = list(predict_files(model, list(data.paths), batch_size, workers, budget))
    scored = [i for i, row in enumerate(rows) if row["status"] != "error"]
    outputs = second_pass(model, [data.paths[i] for i in scored], batch_size, budget)
    check_passes_agree(model, [rows[i] for i in scored], outputs)
    metrics = {"schema": SCHEMA, "model": model_record(model), "data": data_record(data),
               "provenance": model.metadata.raw.get("provenance"), "model_card": model.metadata.raw.get("model_card"),
               "versions": {"model_exported_with": model.metadata.raw.get("versions"),
                            "evaluated_with": runtime_versions()},
               "rows": dict(Counter(row["status"] for row in rows)),
               "errors": [{"path": row["path"], "reason": row["reason"]} for row in rows if row["status"] == "error"],
               "tasks": {}}
    metrics["data"]["relation_to_model"] = relation_to_model(data, metrics["provenance"] or {})
    problems = len(metrics["errors"])
    task_inputs = {}  # per task, the scored images behind the figures: `compare` pairs two models on them
    for task in model.metadata.tasks:
        if task.name not in data.labels:
            continue
        inputs = task_inputs[task.name] = TaskInputs.gather(task, data, rows, scored, outputs)
        metrics["tasks"][task.name] = task_figures(task, inputs, model.metadata.raw,
                                                   n_boot, seed, n_errors)
        problems += metrics["tasks"][task.name]["unknown_labels"]["n"]
    columns, out_rows = prediction_rows(model, data, rows)
    return Evaluation(metrics, out_rows, columns, problems, {"task_inputs": task_inputs})


def second_pass(model: Model, paths: list[str], batch_size: int, budget: DecodeBudget) -> dict[str, np.ndarray]:
    """Every graph output for ``paths`` (the images the station scored), through the same ``prepare_input``."""
    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(paths), batch_size):
        batch = np.stack([prepare_input(p, model.metadata, budget).tensor for p in paths[start:start + batch_size]])
        for name, value in model.outputs(batch).items():
            chunks.setdefault(name, []).append(value)
    return {name: np.concatenate(values) for name, values in chunks.items()}


def check_passes_agree(model: Model, rows: list[dict], outputs: dict[str, np.ndarray]) -> None:
    """The second pass must give the station's probabilities (rows keep 6 decimals), else a provider is
    not deterministic and no figure computed here would describe what a station answers."""
    for task in model.metadata.tasks:
        if not rows:
            return
        station = np.array([[float(row[f"{task.name}.p.{c}"]) for c in task.classes] for row in rows])
        gap = float(np.abs(station - outputs[probability_output(task.name)]).max())
        if gap > PASS_AGREEMENT:
            raise ModelError(f"{model.path}: two runs of the same images differ by up to {gap:.2g} in the {task.name} "
                             "probabilities; this provider is not deterministic enough to evaluate on. Fix: use "
                             "--device cpu.")


@dataclass(frozen=True)
class TaskInputs:
    """One task's images that can be scored: the station gave probabilities and the label is a class."""

    y_true: np.ndarray  # class index per scored image
    probs: np.ndarray  # (n, classes): what the model outputs (temperature applied)
    logits: np.ndarray | None  # (n, classes), before the temperature
    groups: np.ndarray
    paths: list[str]
    station_labels: list[str]  # the rows' TASK.label (a class, or "review")
    unknown: Counter  # label -> count, for labels that are not classes of the task
    unknown_paths: list[str]
    unlabelled: int  # rows with an empty label cell
    not_scored: int  # error rows with a known label

    @classmethod
    def gather(cls, task: TaskInfo, data: LabelledData, rows: list[dict], scored: list[int],
               outputs: dict[str, np.ndarray]) -> "TaskInputs":
        lookup = {c: i for i, c in enumerate(task.classes)}
        labels = data.labels[task.name]
        unknown = Counter(label for label in labels if label and label not in lookup)
        position = {row_index: k for k, row_index in enumerate(scored)}
        keep = [i for i in scored if labels[i] in lookup]
        at = [position[i] for i in keep]
        logits = outputs.get(logits_output(task.name))
        return cls(np.array([lookup[labels[i]] for i in keep], np.int64).reshape(-1),
                   outputs[probability_output(task.name)][at].astype(np.float64) if at else
                   np.zeros((0, len(task.classes))),
                   logits[at].astype(np.float64) if logits is not None and at else None,
                   np.array([data.groups[i] for i in keep], dtype=object), [data.paths[i] for i in keep],
                   [rows[i][f"{task.name}.label"] for i in keep], unknown,
                   [data.paths[i] for i, label in enumerate(labels) if label and label not in lookup],
                   sum(1 for label in labels if not label),
                   sum(1 for i, label in enumerate(labels) if label in lookup and i not in position))


def task_figures(task: TaskInfo, inputs: TaskInputs, raw: dict, n_boot: int, seed: int,
                 n_errors: int) -> dict:
    """The metrics.json block of one task."""
    y_pred = inputs.probs.argmax(axis=1) if len(inputs.probs) else np.zeros(0, np.int64)
    return {
        "classes": list(task.classes),
        "n_scored": int(len(inputs.y_true)),
        "unknown_labels": {"n": sum(inputs.unknown.values()), "labels": dict(inputs.unknown),
                           "paths": inputs.unknown_paths[:50]},
        "unlabelled": inputs.unlabelled,
        "not_scored_error_rows": inputs.not_scored,
        "metrics": classification_metrics(inputs.y_true, y_pred, task.classes),
        "intervals": group_bootstrap(inputs.y_true, y_pred, inputs.groups, task.classes, n_boot, seed),
        "calibration": calibration_block(task, inputs, raw),
        "abstention": abstention_block(task, inputs, y_pred, raw),
        "groups": group_results(inputs.groups, inputs.y_true == y_pred),
        "confident_errors": confident_errors(task, inputs, y_pred, n_errors),
    }


def calibration_block(task: TaskInfo, inputs: TaskInputs, raw: dict) -> dict:
    """Calibration of what the model outputs ("after") and before the temperature ("before").

    Without TTA, softmax(logits) is exactly the uncalibrated probability. With TTA the graph's logits
    are the mean over views, and softmax of a mean is not the mean of the views' softmax: only a
    "before" recorded in the model's provenance can be shown then. ``recorded``: the training run's
    own before/after on its test split, from the provenance (None for older models), for comparison.
    """
    from mscvision.core.calibration import calibration_figures, reliability_bins

    recorded = (((raw.get("provenance") or {}).get("calibration") or {}).get(task.name) or {})
    block: dict = {"temperature": task.temperature, "fitted_on": recorded.get("fitted_on"), "after": None,
                   "before": None, "before_source": None, "reliability": {"after": None, "before": None},
                   "recorded": recorded.get("test")}
    if not len(inputs.y_true):
        return block
    block["after"] = calibration_figures(inputs.probs, inputs.y_true)
    block["reliability"]["after"] = reliability_bins(inputs.probs, inputs.y_true)
    if not raw.get("test_time_augmentation") and inputs.logits is not None:
        before = softmax(inputs.logits)
        block["before"] = calibration_figures(before, inputs.y_true)
        block["reliability"]["before"] = reliability_bins(before, inputs.y_true)
        block["before_source"] = "softmax of the graph's logits output (the probabilities before the temperature)"
        return block
    before = (recorded.get("test") or {}).get("before")
    block["before"] = before
    block["before_source"] = ("recorded in the model's provenance (the training run's test split, not this data): "
                              "with test-time augmentation inside the graph the uncalibrated probabilities cannot be "
                              "recomputed from its outputs" if before else
                              "none: the graph runs test-time augmentation (its logits are a mean over views) and the "
                              "model records no figures before calibration")
    return block


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def abstention_block(task: TaskInfo, inputs: TaskInputs, y_pred: np.ndarray, raw: dict) -> dict:
    """Coverage and selective accuracy at the deployed threshold, the model's certificate (absent in
    older models: the threshold as is, no guarantee), the oracle coverage, the risk-coverage curve,
    and what the training run recorded on its own test split (provenance)."""
    from mscvision.core.selective import oracle_coverage, risk_coverage_curve, selective_figures

    certificate = task.abstention
    target = float(certificate["target_accuracy"]) if certificate else DEFAULT_TARGET_ACCURACY
    confidence = inputs.probs.max(axis=1) if len(inputs.probs) else np.zeros(0)
    correct = y_pred == inputs.y_true
    certified = bool(certificate["certified"]) if certificate else True
    labelled = [label != "review" for label in inputs.station_labels]
    return {
        "threshold": task.threshold,
        "certificate": certificate,
        "target_accuracy": target,
        "target_source": "the model's certificate" if certificate else
                         f"default {DEFAULT_TARGET_ACCURACY}: the model states no abstention certificate",
        "measured": selective_figures(confidence, correct, task.threshold, certified=certified),
        "station": {"labelled": int(sum(labelled)), "n": len(labelled),
                    "selective_accuracy": float(correct[labelled].mean()) if any(labelled) else None},
        "oracle": oracle_coverage(confidence, correct, target),
        "risk_coverage": risk_coverage_curve(confidence, correct),
        "recorded": (((raw.get("provenance") or {}).get("abstention") or {}).get(task.name) or {}).get("test"),
    }


def group_results(groups: np.ndarray, correct: np.ndarray) -> list[dict]:
    """Accuracy per group, the worst first (then the larger groups first: they weigh more)."""
    out = []
    for name in dict.fromkeys(groups.tolist()):
        member = groups == name
        n, right = int(member.sum()), int(correct[member].sum())
        out.append({"group": str(name), "n": n, "correct": right, "accuracy": right / n})
    return sorted(out, key=lambda g: (g["accuracy"], -g["n"], g["group"]))


def confident_errors(task: TaskInfo, inputs: TaskInputs, y_pred: np.ndarray, n: int) -> list[dict]:
    """The ``n`` wrong predictions with the highest top-class probability: what a person should look at first."""
    wrong = np.flatnonzero(y_pred != inputs.y_true)
    order = wrong[np.argsort(-inputs.probs[wrong].max(axis=1), kind="stable")][:n]
    return [{"path": inputs.paths[i], "group": str(inputs.groups[i]), "true": task.classes[inputs.y_true[i]],
             "predicted": task.classes[y_pred[i]], "confidence": float(inputs.probs[i].max()),
             "p_true": float(inputs.probs[i, inputs.y_true[i]])} for i in order]


def prediction_rows(model: Model, data: LabelledData, rows: list[dict]) -> tuple[list[str], list[dict]]:
    """predictions.csv: the station's columns, then ``TASK.true`` per evaluated task and ``group``,
    with ``notes`` kept last (docs/architecture.md: columns are added, never renamed)."""
    station = prediction_columns(model.metadata)
    columns = [c for c in station if c != NOTES] + [f"{t}.true" for t in data.labels] + ["group", NOTES]
    out = []
    for i, row in enumerate(rows):
        extra = {f"{t}.true": labels[i] for t, labels in data.labels.items()}
        out.append({**row, **extra, "group": data.groups[i]})
    return columns, out


def model_record(model: Model) -> dict:
    raw = model.metadata.raw
    return {"path": str(model.path), "file_sha256": model.sha256, "name": raw.get("name"),
            "precision": model.metadata.precision, "test_time_augmentation": raw.get("test_time_augmentation"),
            "created": raw.get("created"), "providers": model.providers,
            "tasks": [{"name": t.name, "classes": list(t.classes), "temperature": t.temperature,
                       "threshold": t.threshold} for t in model.metadata.tasks]}


def data_record(data: LabelledData) -> dict:
    return {"source": str(data.source), "kind": data.kind, "sha256": data.sha256, "split": data.split,
            "n_rows": len(data.paths), "n_groups": len(set(data.groups)), "has_groups": data.has_groups,
            "columns": data.columns, "notes": list(data.notes)}


def relation_to_model(data: LabelledData, provenance: dict) -> str | None:
    """Whether these are the model's own data (by SHA-256): its test groups, or images it trained on."""
    if data.sha256 is None:
        return None
    if data.sha256 == provenance.get("split_sha256"):
        if data.split == "test":
            return "the model's own split.csv, test rows: the groups held out from its training"
        return (f"the model's own split.csv, {data.split} rows: images the model was trained or tuned on, so the "
                "figures are optimistic")
    if data.sha256 == provenance.get("data_manifest_sha256"):
        return ("the model's training manifest: unless restricted to its test split, the rows include images the "
                "model was trained on, so the figures are optimistic")
    return None


def runtime_versions() -> dict:
    import platform

    import onnxruntime
    import PIL

    return {"mscvision": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "onnxruntime": onnxruntime.__version__, "pillow": PIL.__version__}

