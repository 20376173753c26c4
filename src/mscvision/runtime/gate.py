"""The station's out-of-distribution gate: images unlike the training data get ``review``, never a
silent label (issue 16).

The model's metadata carries it under ``"ood"`` (written at export):

    {"learned": {"method": "mahalanobis_energy" | "mahalanobis" | "knn", "output": "ood.score",
                 "calibration_scores": [...], "fitted_on": "..."},          # absent: no learned score
     "image_checks": {"reference": core.image_checks.fit_reference(...),   # version 1 or 2
                      "calibration_scores": {CHECK: [...]}},   # the checks its version measures
     "alpha": 0.05, "alpha_sharing": "..."}

Calibration scores are those of held-out in-distribution images (never trained on). Each score of
an image becomes a conformal p-value against them and the one alpha is shared as
``core.conformal.ALPHA_SHARING`` says (the station applies its own rule, the one stated there), so
an in-distribution image is flagged with probability <= alpha. The deterministic rules of
``core.image_checks`` (another bit depth or pixel size) add reasons and spend no alpha.

A model without ``"ood"`` (exported before the gate existed) loads and predicts as before; ``info``
and every row say that it has no gate. A block that is there but unusable refuses the model at load:
a gate silently dropped would pass every image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from mscvision.core.conformal import (ALPHA_SHARING, GateDecision, bonferroni_shares, calibration_needed, combine,
                                      p_value_sorted)
from mscvision.core.image_checks import CHECKS, READABLE_VERSIONS, check_reason, reference_checks
from mscvision.runtime.metadata import ModelMetadata

OOD_KEY = "ood"
LEARNED = "learned"  # the learned score's name among the p-values and shares
NO_GATE = "this model has no OOD gate"
NO_GATE_DETAIL = (f"{NO_GATE}: an image unlike its training data gets a label without review "
                  "(exported before the gate existed; re-export it to add one)")
NOT_TO_BE_USED = "its probabilities are written for inspection only, not to be used"


class GateMalformed(ValueError):
    """The metadata's "ood" block is present but cannot be used."""


@dataclass(frozen=True)
class Gate:
    alpha: float
    reference: dict | None  # core.image_checks reference; None when the gate has no image checks
    check_calibration: dict[str, np.ndarray]  # check name -> its calibration scores, sorted
    learned_output: str | None  # graph output holding the learned score; None when there is none
    learned_method: str | None
    learned_calibration: np.ndarray | None  # sorted
    shares: dict[str, float]  # of alpha, per score (conformal.bonferroni_shares)

    def level(self, name: str) -> float:
        return self.shares[name] * self.alpha

    def judge(self, checks: Mapping[str, float] | None, rules: Sequence[str] = (),
              learned_score: float | None = None) -> GateDecision:
        """One image: its image-check scores (``core.image_checks.measure``), the deterministic rules'
        reasons, and its learned score (from the graph) → flagged, with every reason that fired.

        A score the gate expects but did not get counts as the most unusual (NaN): no measure is no
        evidence that the image is normal."""
        scores = {name: _number((checks or {}).get(name)) for name in self.check_calibration}
        p_values = {name: p_value_sorted(s, self.check_calibration[name]) for name, s in scores.items()}
        if self.learned_output:
            scores[LEARNED] = _number(learned_score)
            p_values[LEARNED] = p_value_sorted(scores[LEARNED], self.learned_calibration)

        def describe(name: str, p: float, level: float) -> str:
            return self._reason(name, scores[name], p, level)

        # a score that could not be measured is a rule, not a p-value: with a small calibration set
        # its smallest p-value, 1/(n+1), could stay above its level and let the image pass
        unmeasured = [name for name, score in scores.items() if not math.isfinite(score)]
        decision = combine({n: p for n, p in p_values.items() if n not in unmeasured}, self.alpha, self.shares,
                           describe)
        rules = [*rules, *(f"{'the learned OOD score' if name == LEARNED else f'image check {name}'} could not be "
                           "measured" for name in unmeasured)]
        reasons = [*rules, *decision.reasons]
        return GateDecision(bool(reasons), reasons, p_values, scores, list(rules))

    def _reason(self, name: str, score: float, p: float, level: float) -> str:
        calibration = self.learned_calibration if name == LEARNED else self.check_calibration[name]
        typical = _sorted_median(calibration)
        if name == LEARNED:
            return (f"learned OOD score ({self.learned_method}) {score:.3g} above the training images' (typical "
                    f"{typical:.3g}; p={p:.2g} <= {level:.2g}): its features are unlike the training data's")
        return check_reason(name, score, p, typical, level)

    def never_fire(self) -> list[str]:
        """Scores whose calibration set is too small to ever reach their level (1/(n+1) > level)."""
        out = []
        for name, scores in [*self.check_calibration.items(),
                             *([(LEARNED, self.learned_calibration)] if self.learned_output else [])]:
            need = calibration_needed(self.level(name))
            if len(scores) < need:
                out.append(f"{name} can never fire: {len(scores)} calibration scores, {need} needed at "
                           f"p <= {self.level(name):.2g}")
        return out


def _sorted_median(ordered: np.ndarray) -> float:
    """np.median of an already sorted array, without its sort (a flagged tile of a whole field asks
    this for every reason it gives)."""
    n, half = len(ordered), len(ordered) // 2
    if not n:
        return math.nan
    return float(ordered[half]) if n % 2 else float((ordered[half - 1] + ordered[half]) / 2)


def has_gate(metadata: ModelMetadata) -> bool:
    return metadata.raw.get(OOD_KEY) is not None


def load_gate(metadata: ModelMetadata) -> Gate | None:
    """The model's gate, or None for a model without one; ``GateMalformed`` when its block is unusable."""
    return gate_from_block(metadata.raw.get(OOD_KEY))


def image_check_reference(metadata: ModelMetadata) -> dict | None:
    """What ``core.image_checks.measure`` compares with, or None when the model has no image checks."""
    block = metadata.raw.get(OOD_KEY)
    checks = block.get("image_checks") if isinstance(block, dict) else None
    return checks.get("reference") if isinstance(checks, dict) else None


def learned_output(metadata: ModelMetadata) -> str | None:
    """The graph output that holds the learned OOD score, or None when the model has none."""
    block = metadata.raw.get(OOD_KEY)
    learned = block.get("learned") if isinstance(block, dict) else None
    return learned.get("output") if isinstance(learned, dict) else None


def gate_problems(metadata: ModelMetadata, outputs: Mapping[str, object]) -> list[str]:
    """How the gate is unusable, or disagrees with the graph (``outputs``: the graph's outputs by name,
    each with ``.type`` and ``.shape``, as runtime.model.graph_ports gives them); empty for a sound
    gate or none at all."""
    try:
        gate = load_gate(metadata)
    except GateMalformed as exc:
        return [f"its OOD gate (metadata 'ood') is unusable: {exc}"]
    if gate is None:
        return []
    if gate.reference is not None:
        problem = _reference_problem(gate.reference, metadata.spec.in_channels)
        if problem:
            return [f"its OOD gate (metadata 'ood') is unusable: image_checks.reference {problem}"]
    if gate.learned_output is None:
        return []
    port = outputs.get(gate.learned_output)
    if port is None:
        return [f"the OOD gate reads its learned score from output {gate.learned_output!r}, which the graph lacks"]
    if port.type != "tensor(float)" or len(port.shape) != 1:
        return [f"output {gate.learned_output!r} is {port.type}{list(port.shape)}, not a float score per image (N,)"]
    return []


def _reference_problem(reference: dict, channels: int) -> str:
    """What makes the image-check reference unusable for a model with ``channels`` input channels."""
    if reference.get("channels") != channels:
        return f"is for {reference.get('channels')!r} channel(s); the model reads {channels}"
    for key in ("histogram_edges", "histogram_mean"):
        value = reference.get(key)
        if not isinstance(value, list) or len(value) != channels or not all(isinstance(v, list) and v for v in value):
            return f"needs {key} as {channels} non-empty list(s)"
    if not isinstance(reference.get("full_scale"), dict):
        return "needs full_scale as an object (bit depth -> value)"
    profile = reference.get("scale_profile")
    if profile is not None:
        levels = profile.get("levels") if isinstance(profile, dict) else None
        size = 4 * levels - 1 if isinstance(levels, int) and levels >= 2 else None
        means, whitenings = (profile.get("mean"), profile.get("whitening")) if size else (None, None)
        if not (isinstance(means, list) and isinstance(whitenings, list) and len(means) == len(whitenings) == channels
                and all(np.shape(m) == (size,) for m in means)
                and all(np.shape(w) == (size, size) for w in whitenings)):
            return ("needs scale_profile as levels (>= 2), and per channel a mean of 4 * levels - 1 numbers and a "
                    "square whitening matrix of that size")
    return ""


def gate_from_block(block: object) -> Gate | None:
    if block is None:
        return None
    if not isinstance(block, dict):
        raise GateMalformed(f"is {type(block).__name__}, not an object")
    alpha = block.get("alpha")
    if not (_finite(alpha) and 0.0 < alpha < 1.0):
        raise GateMalformed(f"alpha={alpha!r} must be a number in (0, 1)")
    reference, calibration = _image_checks(block.get("image_checks"))
    output, method, learned = _learned(block.get("learned"))
    if not calibration and output is None:
        raise GateMalformed("it has neither a learned score nor image checks")
    shares = bonferroni_shares(list(calibration), LEARNED if output else None)
    return Gate(float(alpha), reference, calibration, output, method, learned, shares)


def _image_checks(block: object) -> tuple[dict | None, dict[str, np.ndarray]]:
    if block is None:
        return None, {}
    if not isinstance(block, dict) or not isinstance(block.get("reference"), dict) \
            or not isinstance(block.get("calibration_scores"), dict):
        raise GateMalformed("image_checks needs a 'reference' object and a 'calibration_scores' object")
    reference = block["reference"]
    if reference.get("version") not in READABLE_VERSIONS:
        raise GateMalformed(f"image_checks.reference version {reference.get('version')!r} is not one this "
                            f"mscvision measures ({', '.join(map(str, READABLE_VERSIONS))})")
    unknown = sorted(set(block["calibration_scores"]) - set(CHECKS))
    if unknown:
        raise GateMalformed(f"image check(s) {unknown} are not ones this mscvision measures ({', '.join(CHECKS)}); "
                            "install the mscvision version that exported the model")
    unmeasured = sorted(set(block["calibration_scores"]) - set(reference_checks(reference)))
    if unmeasured:
        raise GateMalformed(f"image check(s) {unmeasured} are calibrated but its reference (version "
                            f"{reference.get('version')}) does not measure them")
    calibration = {name: _scores(scores, f"image_checks.calibration_scores.{name}")
                   for name, scores in block["calibration_scores"].items()}
    return reference, calibration


def _learned(block: object) -> tuple[str | None, str | None, np.ndarray | None]:
    if block is None:
        return None, None, None
    if not isinstance(block, dict):
        raise GateMalformed("learned must be an object")
    output, method = block.get("output"), block.get("method")
    if not isinstance(output, str) or not output or not isinstance(method, str) or not method:
        raise GateMalformed(f"learned needs an 'output' and a 'method' (got {output!r}, {method!r})")
    return output, method, _scores(block.get("calibration_scores"), "learned.calibration_scores")


def _scores(values: object, key: str) -> np.ndarray:
    """Calibration scores: a non-empty list of finite numbers (an empty one would never flag)."""
    if not isinstance(values, list) or not values or not all(_finite(v) for v in values):
        raise GateMalformed(f"{key} must be a non-empty list of finite numbers")
    return np.sort(np.asarray(values, dtype=np.float64))


def describe_gate(block: object) -> list[str]:
    """``info``'s lines on the gate (``block``: the metadata's "ood", or None)."""
    if block is None:
        return [f"OOD gate     none: {NO_GATE_DETAIL}"]
    try:
        gate = gate_from_block(block)
    except GateMalformed as exc:
        return [f"OOD gate     UNUSABLE ({exc}): predict refuses this model"]
    lines = [f"OOD gate     alpha {gate.alpha:g}: an in-distribution image is flagged (review) with probability "
             f"<= alpha; {ALPHA_SHARING}"]
    if gate.learned_output:
        fitted = block["learned"].get("fitted_on")
        lines.append(f"  learned    {gate.learned_method} score from output {gate.learned_output!r}"
                     f"{f', fitted on {fitted}' if fitted else ''}; {len(gate.learned_calibration)} calibration "
                     f"images; fires at p <= {gate.level(LEARNED):.3g}")
    if gate.check_calibration:
        counts = sorted({len(v) for v in gate.check_calibration.values()})
        lines.append(f"  checks     {', '.join(gate.check_calibration)}; {'/'.join(map(str, counts))} calibration "
                     f"images; each fires at p <= {gate.level(next(iter(gate.check_calibration))):.3g}")
        lines.append("  rules      bit depth and stated pixel size as trained (no alpha spent)")
    lines += [f"  warning    {line}" for line in gate.never_fire()]
    return lines


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float, np.floating)) else math.nan


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
