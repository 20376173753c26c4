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
* with a reference lot (``compare --lot LAYOUT.csv --spec SPEC.yaml``; ``ReferenceLot``), the verdicts
  of every well and lot: each model judges the lot through qc's own code (``runtime.qc.judge_run``:
  the same tiling, gate, abstention, quantification and verdict rules as ``mscvision qc``) against the
  spec's criteria, and ``verdict_changes`` lists the units whose verdict differs, each with both
  models' reasons. The candidate is judged WITHOUT the spec's approval refusal (it is not approved
  yet: this comparison is the evidence for approving it); the command layer runs the station's
  start-up check on both models otherwise unchanged (runtime/startup.py, ``require_approval=False``
  for the candidate only), so the APPROVED model must be one the spec approves, and both must pass
  their conformance vectors.

Tasks are paired by name, classes by name (a candidate may order its classes otherwise); a task
whose class set differs between the two models is not compared, and the report says so.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from mscvision.core.errors import ConfigError
from mscvision.core.intervals import paired_group_bootstrap
from mscvision.core.qclayout import Placement
from mscvision.core.qcspec import QcSpec
from mscvision.runtime.evaluate import Evaluation, LabelledData, TaskInputs, evaluate_model
from mscvision.runtime.model import Model

SCHEMA = "mscvision.comparison/1"
LOT_VERDICTS_NOT_RUN = ("not run: give --lot LAYOUT.csv (path,well,lot, as for `mscvision qc --layout`) and --spec "
                        "SPEC.yaml to judge a reference lot with both models through qc's own code and list every "
                        "well / lot whose verdict changes, with both models' reasons")
SIDES = ("approved", "candidate")


@dataclass(frozen=True)
class ReferenceLot:
    """What ``compare --lot`` judges with both models: the lot placed as qc places it, the parsed spec,
    and each model's start-up check as plain facts (per side: ``approval`` entry or None, ``unapproved``
    reason or None, ``conformance``)."""
    layout: str
    placements: list[Placement]
    spec: QcSpec
    self_checks: dict[str, dict]


@dataclass
class Comparison:
    doc: dict  # comparison.json
    changed: list[dict]  # decisions_changed.csv: one row per image and task whose decision changed
    approved: Evaluation
    candidate: Evaluation
    problems: int  # error rows and unknown labels of either model: exit 3 when > 0
    notes: list[str] = field(default_factory=list)
    verdicts_changed: list[dict] | None = None  # verdicts_changed.csv rows; None: no reference lot was judged


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
                   n_boot: int = 1000, seed: int = 0, n_errors: int = 16, lot: ReferenceLot | None = None,
                   progress: Callable[[str], None] | None = None) -> Comparison:
    tasks, notes = comparable_tasks(approved, candidate, data)
    # the reference lot first: a spec criterion either model cannot judge is refused before any image is read
    lot_doc, lot_rows = (judge_reference_lot(approved, candidate, lot, progress) if lot is not None else
                         ({"changes": None, "note": LOT_VERDICTS_NOT_RUN}, None))
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
           "lot_verdicts": lot_doc}
    for name in tasks:
        classes = next(t.classes for t in approved.metadata.tasks if t.name == name)
        other = next(t.classes for t in candidate.metadata.tasks if t.name == name)
        paired = paired_task(classes, other, ev_a.extra["task_inputs"][name], ev_b.extra["task_inputs"][name],
                             n_boot, seed)
        doc["tasks"][name] = {"classes": list(classes), "paired": paired,
                              "decisions": decision_summary([c for c in changed if c["task"] == name])}
    return Comparison(doc, changed, ev_a, ev_b, ev_a.problems + ev_b.problems, notes, lot_rows)


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
    "absent"). ``judge_reference_lot`` passes it both models' maps."""
    units = sorted(set(approved) | set(candidate))
    return [{"unit": u, "approved": approved.get(u, "absent"), "candidate": candidate.get(u, "absent")}
            for u in units if approved.get(u, "absent") != candidate.get(u, "absent")]


# --- verdicts on a reference lot ---------------------------------------------------------------------------

def judge_reference_lot(approved: Model, candidate: Model, lot: ReferenceLot,
                        progress: Callable[[str], None] | None = None) -> tuple[dict, list[dict]]:
    """Both models judge the lot exactly as ``mscvision qc`` would (``runtime.qc.judge_run``); returns
    ``comparison.json["lot_verdicts"]`` and the verdicts_changed.csv rows (one per changed unit)."""
    from mscvision.runtime.qc import judge_run

    check_lot_tasks(approved, candidate, lot.spec)
    models = dict(zip(SIDES, (approved, candidate)))
    outcomes = {}
    for side, model in models.items():
        said = None if progress is None else (lambda line, side=side: progress(f"{side}: {line}"))
        outcomes[side] = judge_run(model, lot.placements, lot.spec, progress=said)
    verdicts = {side: unit_verdicts(outcome) for side, outcome in outcomes.items()}
    changes = verdict_changes(*({key: v["verdict"] for key, v in verdicts[side].items()} for side in SIDES))
    changed_keys = {c["unit"] for c in changes}
    units = []
    for key in dict.fromkeys([*verdicts["approved"], *verdicts["candidate"]]):
        a, b = verdicts["approved"].get(key), verdicts["candidate"].get(key)
        first = a or b
        units.append({"unit": first["unit"], "level": first["level"], "lot": first["lot"],
                      "approved": _side(a), "candidate": _side(b), "changed": key in changed_keys})
    changed = [u for u in units if u["changed"]]  # in report order: each lot, then its wells
    rows = [{"unit": u["unit"], "level": u["level"], "approved": u["approved"]["verdict"],
             "candidate": u["candidate"]["verdict"], "approved.reason": "; ".join(u["approved"]["reasons"]),
             "candidate.reason": "; ".join(u["candidate"]["reasons"])} for u in changed]
    spec = lot.spec
    doc = {"spec": {"path": spec.path, "sha256": spec.sha256, "name": spec.name,
                    "criteria": [c.text for c in spec.criteria], "confidence": spec.confidence},
           "layout": lot.layout, "n_images": len(lot.placements),
           "models": {side: {"path": str(models[side].path), "sha256": models[side].sha256,
                             "approved_by_spec": lot.self_checks[side].get("approval") is not None,
                             "approval": lot.self_checks[side].get("approval"),
                             "unapproved": lot.self_checks[side].get("unapproved"),
                             "conformance": lot.self_checks[side].get("conformance"),
                             "quantification": outcomes[side].quantification} for side in SIDES},
           "units": units,
           "changes": [{"unit": u["unit"], "level": u["level"], "lot": u["lot"],
                        "approved": u["approved"]["verdict"], "candidate": u["candidate"]["verdict"],
                        "approved.reasons": u["approved"]["reasons"],
                        "candidate.reasons": u["candidate"]["reasons"]} for u in changed],
           "n_changed": len(changed), "note": lot_note(lot)}
    return doc, rows


def check_lot_tasks(approved: Model, candidate: Model, spec: QcSpec) -> None:
    """qc's own refusal (``runtime.qc.task_table``) of a spec criterion naming a task or class either model
    lacks, before any image is read: ``ConfigError`` naming the model."""
    from mscvision.runtime.qc import task_table

    for side, model in zip(SIDES, (approved, candidate)):
        try:
            task_table(model.metadata, spec)
        except ConfigError as exc:
            raise ConfigError(f"the {side} model {model.path} cannot be judged against the spec: {exc}") from None


def unit_verdicts(outcome) -> dict[str, dict]:
    """``{"lot L1": …, "well L1/A1": …}`` in report order (each lot, then its wells): a well is named by its lot
    and well (two lots may both have an A1), with its verdict and qc's reasons."""
    wells_of: dict[str, list] = {}
    for (lot, well), verdict in zip(dict.fromkeys((p.lot, p.well) for p in outcome.placements), outcome.wells):
        wells_of.setdefault(lot, []).append({"unit": f"{lot}/{well}", "level": "well", "lot": lot,
                                             "verdict": verdict.verdict, "reasons": list(verdict.reasons)})
    out = {}
    for verdict in outcome.lots:
        out[f"lot {verdict.name}"] = {"unit": verdict.name, "level": "lot", "lot": verdict.name,
                                      "verdict": verdict.verdict, "reasons": list(verdict.reasons)}
        out.update({f"well {w['unit']}": w for w in wells_of.get(verdict.name, [])})
    return out


def _side(entry: dict | None) -> dict:
    return {"verdict": entry["verdict"], "reasons": entry["reasons"]} if entry else {"verdict": "absent",
                                                                                    "reasons": []}


def lot_note(lot: ReferenceLot) -> str:
    candidate = lot.self_checks["candidate"]
    approval = ("the candidate is not approved by the spec and was judged without qc's approval refusal (only "
                "here: `mscvision qc` refuses it until its entry is in the spec's approval section)"
                if candidate.get("approval") is None else
                "the candidate is already approved by the spec")
    return (f"Both models judged the {len(lot.placements)} image(s) of {lot.layout} through `mscvision qc`'s own "
            f"code against {lot.spec.path} (SHA-256 {lot.spec.sha256}); {approval}; both passed the station's "
            "start-up check otherwise (the approved model's approval, each model's conformance vectors). "
            "No audit record is written: these verdicts are evidence for change control, not a release.")
