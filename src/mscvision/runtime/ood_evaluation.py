"""The OOD part of ``mscvision evaluate`` (issue 16 item 4): how often the gate flags the
in-distribution data, and how well each of its scores separates that data from each source given
with ``--ood NAME=PATH``.

Every figure comes from the station's own rows (``predict.predict_files``): the gate's decision for
each image rides on its row (``predict.GATE_DECISION``, not a column), with every score and p-value.
Per source and per score (the learned score when the model has one, each image check alone, and the
combined gate): AUROC and FPR at 95% TPR (``core.ood_metrics``: the source is the positive class,
in-distribution the negative) and the flag rate at the deployed threshold (a score alone: its p-value
<= its share of alpha; the combined gate: the row's ``gate`` cell). A labelled source (a covariate
shift keeps its labels) also gets its accuracy per task against the in-distribution data's, both
from the rows' probabilities, so that "how far accuracy falls and what share the gate flags" stand
side by side.

Ranking scores: a score alone is ranked by its raw value (higher = more unusual: finer than its
p-value, which ties every image beyond the calibration set). The combined gate is ranked by its
Bonferroni-adjusted p-value ``q = min_k p_k / w_k`` (w_k: score k's share of alpha), which is <= alpha
exactly when some score fires; an image flagged by a deterministic rule (another bit depth or
stated pixel size) gets q = 0. AUROC ranks -q. Its resolution is the calibration sets': an image
beyond every calibration image of score k gets q_k = 1 / ((n_k + 1) w_k) from it, and no smaller q
from k; about one in n_k + 1 of the in-distribution images does the same (exchangeability), so a
source that score k alone catches, however clearly, ties with them: its combined AUROC is at most
``combined_auroc_ceiling[k]``, the AUROC of q_k against the in-distribution q (~0.99 for an image
check with 500 calibration images beside seven others, which need 319 each to fire at all; higher
for the learned score, whose share is larger). A larger calibration set raises it.

Error rows (an image the station refused: wrong size, channels, unreadable) have no scores: they are
counted per source (``n_error``) and left out of the figures; they never get a label either.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mscvision.core.conformal import ALPHA_SHARING
from mscvision.core.errors import DataError
from mscvision.core.manifest import manifest_from_csv
from mscvision.core.metrics import classification_metrics
from mscvision.core.conformal import smallest_p
from mscvision.core.ood_metrics import DEFAULT_TPR, auroc, flag_rate, separation
from mscvision.runtime.evaluate import _header, task_columns  # the labelled data's own column rule
from mscvision.runtime.gate import LEARNED, NO_GATE_DETAIL, Gate, load_gate
from mscvision.runtime.inputs import DecodeBudget, collect_inputs
from mscvision.runtime.metadata import TaskInfo
from mscvision.runtime.model import Model
from mscvision.runtime.predict import GATE_DECISION, predict_files

COMBINED = "combined"
COMBINED_SCORE = ("the Bonferroni-adjusted p-value q = min over scores of p / (its share of alpha), flagged when "
                  "q <= alpha; 0 when a deterministic rule fired (bit depth, stated pixel size); AUROC ranks -q")
SINGLE_SCORE = ("each score alone: ranked by its raw value (higher = more unusual), flagged when its conformal "
                "p-value <= its share of alpha (as the deployed gate)")
FPR_DEFINITION = (f"the share of in-distribution images flagged at the highest threshold that flags >= "
                  f"{DEFAULT_TPR:.0%} of the source (OOD = positive, as OpenOOD)")
FPR_KEY = f"fpr_at_{round(100 * DEFAULT_TPR)}_tpr"


@dataclass(frozen=True)
class OodSource:
    """One ``--ood NAME=PATH``: a folder of images, or a manifest (labelled when it has task columns)."""

    name: str
    path: Path
    kind: str  # "folder" | "manifest"
    paths: tuple[str, ...]
    labels: dict[str, tuple[str, ...]]  # model task -> label per image; empty for unlabelled images
    notes: tuple[str, ...] = ()


def load_ood_source(name: str, path: str | Path, tasks: tuple[TaskInfo, ...]) -> OodSource:
    """A folder without ``manifest.csv``: its image files (recursively), unlabelled. A CSV, or a folder
    holding ``manifest.csv``: its ``path`` column, and labels from the columns named like the model's
    tasks (``label`` for a one-task model) when there are any; every row, whatever its split column."""
    path = Path(path)
    if path.is_dir() and not (path / "manifest.csv").is_file():
        found = collect_inputs([str(path)], recursive=True)
        if not found.paths:
            raise DataError(f"--ood {name}={path}: the folder holds no image files. Fix: name a folder of images or "
                            "a manifest.csv.")
        notes = [f"{p}: {reason}" for p, reason in found.problems]
        return OodSource(name, path, "folder", tuple(found.paths), {}, tuple(notes))
    csv_path = path / "manifest.csv" if path.is_dir() else path
    if not csv_path.is_file():
        raise DataError(f"--ood {name}={path}: no such folder or manifest. Fix: name a folder of images or a "
                        "manifest.csv.")
    header = _header(csv_path)
    try:
        columns = task_columns(csv_path, header, tasks)
    except DataError:  # no label column: unlabelled images (far-OOD sources need none)
        columns = {}
    manifest, _ = manifest_from_csv(csv_path, list(dict.fromkeys(columns.values())), check_files=False)
    notes = ["every row is used (its split column is ignored)"] if "split" in header else []
    return OodSource(name, csv_path, "manifest", tuple(str(p) for p in manifest.paths),
                     {task: manifest.labels[column] for task, column in columns.items()}, tuple(notes))


def source_rows(model: Model, source: OodSource, batch_size: int, workers: int,
                budget: DecodeBudget | None) -> list[dict]:
    """The station's rows for a source's images (the same call as for the labelled data)."""
    return list(predict_files(model, list(source.paths), batch_size, workers, budget))


def ood_figures(model: Model, in_rows: list[dict], in_labels: dict[str, tuple[str, ...]],
                sources: list[tuple[OodSource, list[dict]]]) -> dict:
    """The metrics.json ``"ood"`` block. ``in_rows``: the evaluated data's rows (in-distribution),
    ``in_labels``: its labels per task; ``sources``: each source with its rows."""
    gate = load_gate(model.metadata)
    tasks = [t for t in model.metadata.tasks if t.name in in_labels]
    in_accuracy = {t.name: task_accuracy(t, in_rows, in_labels[t.name]) for t in tasks}
    block: dict = {"gate": gate_record(gate, model.metadata.raw) if gate else None,
                   "note": None if gate else NO_GATE_DETAIL,
                   "definitions": {"single": SINGLE_SCORE, COMBINED: COMBINED_SCORE, FPR_KEY: FPR_DEFINITION},
                   "in_distribution": counts(in_rows), "sources": {}}
    in_scores = None
    if gate:
        in_scores = gate_scores(gate, in_rows)
        block["in_distribution"]["flag_rate"] = {name: flag_rate(flags) for name, (_, flags) in in_scores.items()}
        block["in_distribution"]["combined_auroc_ceiling"] = {
            name: auroc(in_scores[COMBINED][0], [-smallest_q(gate, name)]) for name in score_names(gate)}
    block["in_distribution"]["accuracy"] = in_accuracy
    for source, rows in sources:
        entry = {"path": str(source.path), "kind": source.kind, "labelled": bool(source.labels),
                 "notes": list(source.notes), **counts(rows)}
        if gate:
            scores = gate_scores(gate, rows)
            entry["scores"] = {name: {**separation(in_scores[name][0], values), "flag_rate": flag_rate(flags)}
                               for name, (values, flags) in scores.items()}
            entry["flagged_or_refused"] = ((sum(r.get("gate") == "flagged" for r in rows) + entry["n_error"])
                                           / len(rows)) if rows else None
        entry["accuracy"] = source_accuracy(tasks, rows, source.labels, in_accuracy) if source.labels else None
        block["sources"][source.name] = entry
    return block


def smallest_q(gate: Gate, name: str) -> float:
    """The smallest adjusted p-value score ``name`` can give: beyond every one of its calibration scores."""
    return smallest_p(len(gate.learned_calibration if name == LEARNED else gate.check_calibration[name])) / \
        gate.shares[name]


def gate_record(gate: Gate, raw: dict) -> dict:
    learned = (raw.get("ood") or {}).get("learned") or {}
    return {"alpha": gate.alpha, "alpha_sharing": ALPHA_SHARING, "scores": score_names(gate),
            "levels": {name: gate.level(name) for name in score_names(gate)},
            "learned_method": gate.learned_method, "learned_fitted_on": learned.get("fitted_on"),
            "n_calibration": {name: len(gate.learned_calibration if name == LEARNED else gate.check_calibration[name])
                              for name in score_names(gate)}}


def score_names(gate: Gate) -> list[str]:
    """The learned score first (when there is one), then the image checks, as the gate shares alpha."""
    return [*([LEARNED] if gate.learned_output else []), *gate.check_calibration]


def gate_scores(gate: Gate, rows: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per score (and ``combined``): (ranking score per judged row, flagged per judged row); rows
    without a decision (error rows) are left out."""
    names = score_names(gate)
    values: dict[str, list[float]] = {name: [] for name in [*names, COMBINED]}
    flags: dict[str, list[bool]] = {name: [] for name in values}
    for row in rows:
        decision = row.get(GATE_DECISION)
        if decision is None:
            continue
        for name in names:
            values[name].append(decision.scores.get(name, math.nan))
            flags[name].append(decision.p_values[name] <= gate.level(name))  # combine()'s own test
        q = 0.0 if decision.rules else min(decision.p_values[n] / gate.shares[n] for n in names)
        values[COMBINED].append(-q)
        flags[COMBINED].append(decision.flagged)
    return {name: (np.asarray(values[name], np.float64), np.asarray(flags[name], bool)) for name in values}


def counts(rows: list[dict]) -> dict:
    status = Counter(row["status"] for row in rows)
    return {"n": len(rows), "n_error": status.get("error", 0), "n_scored": len(rows) - status.get("error", 0),
            "status": dict(status), "gate": dict(Counter(row.get("gate", "") for row in rows if row["status"] != "error"))}


def task_accuracy(task: TaskInfo, rows: list[dict], labels: tuple[str, ...]) -> dict | None:
    """Top-class accuracy of the rows with a label that is a class of the task (from the rows'
    probabilities, before any threshold or gate), and of those the gate passed; None when none."""
    lookup = {c: i for i, c in enumerate(task.classes)}
    keep = [i for i, row in enumerate(rows) if row["status"] != "error" and labels[i] in lookup]
    unknown = sum(1 for label in labels if label and label not in lookup)
    if not keep:
        return None if not unknown else {"n": 0, "unknown_labels": unknown, "balanced_accuracy": None,
                                          "accuracy": None, "passed": None}
    y_true = np.array([lookup[labels[i]] for i in keep])
    y_pred = np.array([int(np.argmax([float(rows[i][f"{task.name}.p.{c}"]) for c in task.classes])) for i in keep])
    figures = classification_metrics(y_true, y_pred, task.classes)
    passed = np.array([rows[i].get("gate") == "pass" for i in keep])
    passed_figures = classification_metrics(y_true[passed], y_pred[passed], task.classes) if passed.any() else None
    return {"n": len(keep), "unknown_labels": unknown, "balanced_accuracy": figures["balanced_accuracy"],
            "accuracy": figures["accuracy"],
            "passed": {"n": int(passed.sum()), "balanced_accuracy": passed_figures["balanced_accuracy"]}
            if passed_figures else None}


def source_accuracy(tasks: list[TaskInfo], rows: list[dict], labels: dict[str, tuple[str, ...]],
                    in_accuracy: dict[str, dict | None]) -> dict:
    """Per task: the source's accuracy and its drop from the in-distribution data's (balanced accuracy)."""
    out = {}
    for task in tasks:
        if task.name not in labels:
            continue
        figures = task_accuracy(task, rows, labels[task.name])
        reference = (in_accuracy.get(task.name) or {}).get("balanced_accuracy")
        if figures is not None:
            here = figures["balanced_accuracy"]
            figures["in_distribution_balanced_accuracy"] = reference
            figures["balanced_accuracy_drop"] = None if here is None or reference is None else reference - here
        out[task.name] = figures
    return out
