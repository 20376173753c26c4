"""PASS / FAIL / REVIEW for a well or a lot against the QC spec's criteria: a recommendation, with the
estimate, its interval, the limit and the reason in words a QC reviewer reads.

The rules (docs/architecture.md, issue 17; ILAC-G8's guarded acceptance, so that an estimate just
inside a limit is not a PASS):

- a fraction criterion ``>=`` / ``<=`` LIMIT passes when its whole interval satisfies the limit, fails
  when the whole interval violates it, and goes to REVIEW when the interval straddles it, or when the
  fraction cannot be judged (no usable tile, a class the model's confusions cannot correct);
- quality criteria (``flagged <= x`` of the evaluated tiles, ``abstained <= x`` of the usable tiles,
  ``tiles >= n`` usable) and the images themselves (an image that errored or is doubted, a tile that
  could not be evaluated) never FAIL a well: when they are not met the data cannot carry a verdict,
  so it is REVIEW with the reason;
- a well is REVIEW if any criterion is REVIEW, else FAIL if any fails, else PASS: PASS only when
  every criterion passes and no image has a problem;
- a lot is the worst of its wells (FAIL > REVIEW > PASS) combined with its own criteria judged on all
  its usable tiles pooled.

Pure functions of tile results (``UnitTiles``, built by the caller from the field scans); no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from mscvision.core.errors import EXIT_INPUTS_FAILED, EXIT_OK, EXIT_QC_FAIL, EXIT_QC_REVIEW
from mscvision.core.qcspec import Criterion, QcSpec
from mscvision.core.quantify import Fraction, estimate_fractions, unjudgeable_reason

PASS, FAIL, REVIEW = "PASS", "FAIL", "REVIEW"
IMAGES_CRITERION = "every image read in full and trusted (no error, no doubt)"
COUNT_KEYS = ("tiles", "background", "evaluated", "usable", "flagged", "abstained", "errors")


@dataclass
class UnitTiles:
    """One well or one lot: what its images' usable tiles say, per task."""

    name: str
    level: str                             # "well" | "lot"
    images: list[str]
    counts: dict[str, int]                 # COUNT_KEYS (tiles, background, evaluated, usable, flagged, ...)
    problems: list[str]                    # image errors / doubts, each naming the image
    probabilities: dict[str, np.ndarray]   # per task (n_usable, K), calibrated
    labels: dict[str, np.ndarray]          # per task (n_usable,) class index, -1 = abstained
    clusters: np.ndarray                   # (n_usable,) cluster id (spatial block, unique across images)


@dataclass(frozen=True)
class CriterionResult:
    criterion: str          # the spec's text, or IMAGES_CRITERION
    kind: str               # fraction | flagged | abstained | tiles | images
    task: str | None
    cls: str | None
    op: str | None
    limit: float | None
    estimate: float | None  # the fraction, the observed rate, or the tile count
    low: float | None       # fraction criteria only
    high: float | None
    result: str             # PASS | FAIL | REVIEW
    reason: str

    def to_dict(self) -> dict:
        return {"criterion": self.criterion, "kind": self.kind, "task": self.task, "class": self.cls,
                "op": self.op, "limit": self.limit, "estimate": _json_number(self.estimate),
                "low": _json_number(self.low), "high": _json_number(self.high), "result": self.result,
                "reason": self.reason}


@dataclass
class Verdict:
    name: str
    level: str
    verdict: str
    reasons: list[str]
    criteria: list[CriterionResult]
    counts: dict[str, int]
    fractions: dict[str, dict[str, Fraction]]
    wells: list[str] = field(default_factory=list)   # a lot's wells (not part of VERDICT: the caller adds it)

    def to_dict(self) -> dict:
        """The VERDICT shape of verdicts.json (schema mscvision.qc/1)."""
        return {"name": self.name, "level": self.level, "verdict": self.verdict, "reasons": list(self.reasons),
                "criteria": [r.to_dict() for r in self.criteria], "counts": dict(self.counts),
                "fractions": {task: {cls: f.to_dict() for cls, f in by_class.items()}
                              for task, by_class in self.fractions.items()}}


def _json_number(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


# --- one unit --------------------------------------------------------------------------------------------

def judge(unit: UnitTiles, spec: QcSpec, tasks: Mapping[str, tuple[Sequence[str], Mapping | None]]) -> Verdict:
    """The verdict of one well (or of a lot's pooled tiles) against every criterion of the spec.

    tasks: name -> (classes in output order, the task's quantification block or None).
    """
    fractions = unit_fractions(unit, spec, tasks)
    results = [_images_result(unit)]
    for criterion in spec.criteria:
        if criterion.kind == "fraction":
            results.append(_fraction_result(criterion, fractions, spec.confidence))
        else:
            results.append(_quality_result(criterion, unit.counts))
    verdict = combine([r.result for r in results])
    return Verdict(unit.name, unit.level, verdict, _reasons(results, verdict, spec.confidence), results,
                   dict(unit.counts), fractions)


def unit_fractions(unit: UnitTiles, spec: QcSpec,
                   tasks: Mapping[str, tuple[Sequence[str], Mapping | None]]) -> dict[str, dict[str, Fraction]]:
    """Every task's class fractions over the unit's usable tiles (reported whether or not a criterion names them)."""
    out = {}
    for name, (classes, quantification) in tasks.items():
        probs = unit.probabilities.get(name)
        probs = np.zeros((0, len(classes))) if probs is None else np.asarray(probs, dtype=np.float64)
        labels = unit.labels.get(name, np.full(len(probs), -1))
        estimates = estimate_fractions(probs, np.asarray(labels), np.asarray(unit.clusters) if len(probs) else None,
                                       quantification, spec.confidence, task=name, classes=classes)
        out[name] = {f.cls: f for f in estimates}
    return out


def combine(results: Iterable[str]) -> str:
    """A well's rule: REVIEW if any REVIEW, else FAIL if any FAIL, else PASS (nothing to judge: REVIEW)."""
    results = list(results)
    if not results or REVIEW in results:
        return REVIEW
    return FAIL if FAIL in results else PASS


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def _fraction_result(c: Criterion, fractions: Mapping[str, Mapping[str, Fraction]],
                     confidence: float) -> CriterionResult:
    level = f"{confidence:.0%}"
    f = fractions.get(c.task, {}).get(c.cls)
    if f is None:
        return CriterionResult(c.text, c.kind, c.task, c.cls, c.op, c.limit, None, None, None, REVIEW,
                               f"the model has no class {c.cls!r} in task {c.task!r}: this criterion cannot be judged")
    stated = f"{c.task}={c.cls} {_fmt(f.estimate)} [{_fmt(f.low)}, {_fmt(f.high)}] {c.op} {c.limit_text}"
    why_not = unjudgeable_reason(f)
    if why_not:
        return CriterionResult(c.text, c.kind, c.task, c.cls, c.op, c.limit, f.estimate, f.low, f.high, REVIEW,
                               f"{c.task}={c.cls}: {why_not}; a person reviews")
    if c.met_by(f.low) and c.met_by(f.high):
        result, why = PASS, f"the whole {level} interval meets the limit"
    elif not c.met_by(f.low) and not c.met_by(f.high):
        result, why = FAIL, f"the whole {level} interval violates the limit"
    else:
        result, why = REVIEW, (f"the {level} interval straddles the limit: the tiles cannot tell whether it is "
                               "met; a person reviews")
    if f.kind != "pacc":
        why += " (unadjusted mean probability: the model carries no confusions to correct its count with)"
    return CriterionResult(c.text, c.kind, c.task, c.cls, c.op, c.limit, f.estimate, f.low, f.high, result,
                           f"{stated}: {why}")


def _quality_result(c: Criterion, counts: Mapping[str, int]) -> CriterionResult:
    """flagged / abstained / tiles: met → PASS; not met → REVIEW (never FAIL: the data cannot carry a verdict)."""
    if c.kind == "tiles":
        usable = int(counts.get("usable", 0))
        met = c.met_by(usable)
        reason = (f"{usable} usable tiles >= {c.limit_text}: enough tissue" if met else
                  f"{usable} usable tiles, fewer than {c.limit_text}: too little tissue to judge; a person reviews")
        return CriterionResult(c.text, c.kind, None, None, c.op, c.limit, float(usable), None, None,
                               PASS if met else REVIEW, reason)
    count, of, denominator = ((counts.get("flagged", 0), "evaluated", counts.get("evaluated", 0)) if c.kind == "flagged"
                              else (counts.get("abstained", 0), "usable", counts.get("usable", 0)))
    if not denominator:
        return CriterionResult(c.text, c.kind, None, None, c.op, c.limit, None, None, None, REVIEW,
                               f"no {of} tiles, so the {c.kind} share is unknown; a person reviews")
    rate = count / denominator
    stated = f"{c.kind} {_fmt(rate)} ({count} of {denominator} {of} tiles) {c.op} {c.limit_text}"
    if c.met_by(rate):
        return CriterionResult(c.text, c.kind, None, None, c.op, c.limit, rate, None, None, PASS, f"{stated}: met")
    what = ("look unlike the training data (OOD gate)" if c.kind == "flagged" else
            "are below the model's certified confidence")
    return CriterionResult(c.text, c.kind, None, None, c.op, c.limit, rate, None, None, REVIEW,
                           f"{stated}: exceeded: too many tiles {what}; a person reviews")


def _images_result(unit: UnitTiles) -> CriterionResult:
    problems = list(unit.problems)
    errors = int(unit.counts.get("errors", 0))
    if errors:
        problems.append(f"{errors} tile{'s' if errors != 1 else ''} could not be evaluated (unread or failed): the "
                        "estimate would rest on part of the field")
    if not unit.images:
        problems.append("no image belongs to it")
    if problems:
        return CriterionResult(IMAGES_CRITERION, "images", None, None, None, None, None, None, None, REVIEW,
                               "; ".join(problems) + "; no PASS may rest on them, a person reviews")
    n = len(unit.images)
    return CriterionResult(IMAGES_CRITERION, "images", None, None, None, None, None, None, None, PASS,
                           f"{n} image{'s' if n != 1 else ''}, each read in full with no doubt")


def _reasons(results: Sequence[CriterionResult], verdict: str, confidence: float) -> list[str]:
    if verdict == PASS:
        fractions = sum(r.kind == "fraction" for r in results)
        return [f"every criterion is met: {fractions} fraction criteri{'a' if fractions != 1 else 'on'} with the "
                f"whole {confidence:.0%} interval inside the limit, quality and images in order"]
    order = (REVIEW, FAIL) if verdict == REVIEW else (FAIL,)
    # each reason states its criterion's figures and limit; only the images' needs its subject named
    return [f"{r.result}: {'images: ' if r.kind == 'images' else ''}{r.reason}"
            for wanted in order for r in results if r.result == wanted]


# --- a lot -----------------------------------------------------------------------------------------------

def judge_lot(unit: UnitTiles, wells: Sequence[Verdict], spec: QcSpec,
              tasks: Mapping[str, tuple[Sequence[str], Mapping | None]]) -> Verdict:
    """The lot's verdict: the worst of its wells (FAIL > REVIEW > PASS) and its own criteria on the pooled
    tiles of all its wells (``unit``: the lot's tiles, clusters unique across images)."""
    pooled = judge(unit, spec, tasks)
    worst = lot_rule([w.verdict for w in wells] + [pooled.verdict])
    reasons = []
    for w in wells:
        if w.verdict != PASS:
            reasons.append(f"well {w.name}: {w.verdict}" + (f" ({w.reasons[0]})" if w.reasons else ""))
    if not wells:
        worst = FAIL if pooled.verdict == FAIL else REVIEW
        reasons.append("no well of this lot was judged")
    if pooled.verdict != PASS:
        reasons += [f"lot pooled: {r}" for r in pooled.reasons]
    if worst == PASS:
        reasons = [f"every well ({len(wells)}) passes and the pooled tiles meet every criterion"]
    return Verdict(unit.name, "lot", worst, reasons, pooled.criteria, pooled.counts, pooled.fractions,
                   wells=[w.name for w in wells])


def lot_rule(verdicts: Iterable[str]) -> str:
    """Worst of: FAIL if any FAIL, else REVIEW if any REVIEW, else PASS (nothing: REVIEW)."""
    verdicts = list(verdicts)
    if not verdicts:
        return REVIEW
    return FAIL if FAIL in verdicts else (REVIEW if REVIEW in verdicts else PASS)


def exit_code_for(verdicts: Iterable[Verdict | str]) -> int:
    """0 every verdict PASS · 4 any FAIL · 5 any REVIEW and no FAIL · 3 nothing judged (core/errors.py)."""
    values = [v if isinstance(v, str) else v.verdict for v in verdicts]
    if not values:
        return EXIT_INPUTS_FAILED
    if FAIL in values:
        return EXIT_QC_FAIL
    return EXIT_QC_REVIEW if REVIEW in values else EXIT_OK
