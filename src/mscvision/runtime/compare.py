"""Compare an approved model with a candidate on the same labelled images (``mscvision compare``):
the evidence a change-control record attaches before a new model is approved.

Each model is evaluated exactly as ``mscvision evaluate`` does (``runtime.evaluate.evaluate_model``:
the station's own rows, group-bootstrap intervals), and then the two are paired image by image:

* the difference candidate − approved of balanced accuracy, macro / weighted F1 and accuracy, and
  of each class's recall and F1, with a PAIRED group bootstrap (``core.intervals.
  paired_group_bootstrap``: each draw resamples the groups once and scores both models on it, so
  the interval is of the change itself; two separate intervals that overlap say little about it);
* the images whose decision changed, per task: another label, a label that became ``review`` (or
  back), an image one model could not read; with the truth, so "fixed" and "broken" are counted;
* verdicts on a reference lot: ``verdict_changes`` compares two per-unit verdict maps. TODO(issue 17):
  ``mscvision qc`` does not exist in this build; once it does, ``compare --lot DIR --spec SPEC`` runs
  qc with each model on the lot and passes both verdict maps to ``verdict_changes`` (the report
  section and ``comparison.json["lot_verdicts"]`` are ready for them).

Tasks are paired by name, classes by name (a candidate may order its classes otherwise); a task
whose class set differs between the two models is not compared, and the report says so.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from mscvision.core.errors import ConfigError
from mscvision.core.intervals import paired_group_bootstrap
from mscvision.runtime.evaluate import Evaluation, LabelledData, TaskInputs, evaluate_model
from mscvision.runtime.model import Model

SCHEMA = "mscvision.comparison/1"
LOT_VERDICTS_TODO = ("not run: verdicts on a reference lot need `mscvision qc` (issue 17), which this build does not "
                     "have yet; compare will run it with each model and list every well / lot whose verdict changes")


@dataclass
class Comparison:
    doc: dict  # comparison.json
    changed: list[dict]  # decisions_changed.csv: one row per image and task whose decision changed
    approved: Evaluation
    candidate: Evaluation
    problems: int  # error rows and unknown labels of either model: exit 3 when > 0
    notes: list[str] = field(default_factory=list)


def comparable_tasks(approved: Model, candidate: Model, data: LabelledData) -> tuple[list[str], list[str]]:
    """(tasks both models have with the same classes and DATA labels, notes on the others)."""
    theirs = {t.name: t for t in candidate.metadata.tasks}
    tasks, notes = [], []
    for task in approved.metadata.tasks:
        other = theirs.get(task.name)
        if task.name not in data.labels:
            continue
        if other is None:
            notes.append(f"task {task.name}: the candidate has no such task; not compared")
        elif set(other.classes) != set(task.classes) or len(other.classes) != len(task.classes):
            notes.append(f"task {task.name}: the classes differ (approved {list(task.classes)}, candidate "
                         f"{list(other.classes)}); not compared")
        else:
            tasks.append(task.name)
    notes += [f"task {name}: only the candidate has it; not compared" for name in theirs
              if name not in {t.name for t in approved.metadata.tasks}]
    if not tasks:
        raise ConfigError(f"{approved.path} and {candidate.path} share no task with the same classes that "
                          f"{data.source} labels: nothing to compare. " + " ".join(notes))
    return tasks, notes


def compare_models(approved: Model, candidate: Model, data: LabelledData, *, batch_size: int = 32, workers: int = 2,
                   n_boot: int = 1000, seed: int = 0, n_errors: int = 16) -> Comparison:
    tasks, notes = comparable_tasks(approved, candidate, data)
    # only the compared tasks are evaluated: a task the candidate labels otherwise is no input problem
    data = dataclasses.replace(data, labels={t: data.labels[t] for t in tasks},
                               columns={t: data.columns[t] for t in tasks})
    ev_a = evaluate_model(approved, data, batch_size=batch_size, workers=workers, n_boot=n_boot, seed=seed,
                          n_errors=n_errors)
    ev_b = evaluate_model(candidate, data, batch_size=batch_size, workers=workers, n_boot=n_boot, seed=seed,
                          n_errors=n_errors)
    changed = decision_changes(approved, candidate, data, ev_a.rows, ev_b.rows, tasks)
    doc = {"schema": SCHEMA, "approved": ev_a.metrics, "candidate": ev_b.metrics, "tasks": {}, "notes": notes,
           "decisions_changed": {"n_images": len({c["path"] for c in changed}), "n": len(changed)},
           "lot_verdicts": {"changes": None, "note": LOT_VERDICTS_TODO}}
    for name in tasks:
        classes = next(t.classes for t in approved.metadata.tasks if t.name == name)
        other = next(t.classes for t in candidate.metadata.tasks if t.name == name)
        paired = paired_task(classes, other, ev_a.extra["task_inputs"][name], ev_b.extra["task_inputs"][name],
                             n_boot, seed)
        doc["tasks"][name] = {"classes": list(classes), "paired": paired,
                              "decisions": decision_summary([c for c in changed if c["task"] == name])}
    return Comparison(doc, changed, ev_a, ev_b, ev_a.problems + ev_b.problems, notes)


def paired_task(classes: tuple[str, ...], candidate_classes: tuple[str, ...], a: TaskInputs, b: TaskInputs,
                n_boot: int, seed: int) -> dict:
    """The paired bootstrap of one task over the images both models scored (in the approved model's
    class order)."""
    where_b = {path: i for i, path in enumerate(b.paths)}
    common = [(i, where_b[p]) for i, p in enumerate(a.paths) if p in where_b]
    ia = np.array([i for i, _ in common], np.int64)
    ib = np.array([j for _, j in common], np.int64)
    to_approved_order = np.array([classes.index(c) for c in candidate_classes], np.int64)
    pred_a = a.probs[ia].argmax(axis=1) if len(ia) else np.zeros(0, np.int64)
    pred_b = to_approved_order[b.probs[ib].argmax(axis=1)] if len(ib) else np.zeros(0, np.int64)
    result = paired_group_bootstrap(a.y_true[ia], pred_a, pred_b, a.groups[ia], classes, n_boot, seed)
    result["n_approved_only"] = len(a.paths) - len(common)
    result["n_candidate_only"] = len(b.paths) - len(common)
    result["top_class_changed"] = int((pred_a != pred_b).sum())
    return result


def decision_changes(approved: Model, candidate: Model, data: LabelledData, rows_a: list[dict], rows_b: list[dict],
                     tasks: list[str]) -> list[dict]:
    """One row per image and task whose station decision differs: the label cell (a class or ``review``),
    or ``error`` when a model could not read the image."""
    out = []
    for i, (ra, rb) in enumerate(zip(rows_a, rows_b)):
        for task in tasks:
            da, db = _decision(ra, task), _decision(rb, task)
            if da == db:
                continue
            truth = data.labels[task][i]
            out.append({"path": data.paths[i], "group": data.groups[i], "task": task, "true": truth,
                        "approved": da, "candidate": db, "change": change_kind(da, db, truth),
                        "approved.p": _top_p(ra, approved, task), "candidate.p": _top_p(rb, candidate, task),
                        "approved.reason": ra["reason"], "candidate.reason": rb["reason"]})
    return out


def _decision(row: dict, task: str) -> str:
    return "error" if row["status"] == "error" else row[f"{task}.label"]


def _top_p(row: dict, model: Model, task: str) -> float | None:
    classes = next(t.classes for t in model.metadata.tasks if t.name == task)
    values = [row.get(f"{task}.p.{c}") for c in classes]
    return None if row["status"] == "error" or any(v in ("", None) for v in values) else float(max(values))


def change_kind(approved: str, candidate: str, truth: str) -> str:
    """What a changed decision means: ``fixed`` / ``broken`` / ``other label`` when both gave a label,
    else ``to review`` / ``from review`` / ``to error`` / ``from error``."""
    for special in ("error", "review"):
        if candidate == special:
            return f"to {special}"
        if approved == special:
            return f"from {special}"
    if truth and candidate == truth:
        return "fixed"
    if truth and approved == truth:
        return "broken"
    return "other label"


def decision_summary(changed: list[dict]) -> dict:
    return {"n": len(changed), "by_kind": dict(Counter(c["change"] for c in changed)),
            "transitions": [{"approved": a, "candidate": b, "n": n} for (a, b), n in
                            Counter((c["approved"], c["candidate"]) for c in changed).most_common()]}


def verdict_changes(approved: dict[str, str], candidate: dict[str, str]) -> list[dict]:
    """The units (wells, lots) whose verdict differs between the two models' qc runs on one reference lot,
    ``{unit: "PASS" | "FAIL" | "REVIEW"}`` each; a unit only one run judged counts as a change (to or from
    "absent"). The hook for ``compare --lot`` (see the module docstring)."""
    units = sorted(set(approved) | set(candidate))
    return [{"unit": u, "approved": approved.get(u, "absent"), "candidate": candidate.get(u, "absent")}
            for u in units if approved.get(u, "absent") != candidate.get(u, "absent")]
