"""The metadata contract of an exported model (docs/architecture.md "The model-artifact contract").

Export writes this JSON document into the ONNX file's ``metadata_props`` under ``METADATA_KEY``;
the runtime parses it here and refuses anything it does not understand, so a station never runs a
model whose preprocessing or class order it would have to guess.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from mscvision.core.errors import ConfigError, ModelError
from mscvision.core.preprocess import PreprocessSpec

METADATA_KEY = "mscvision"
FORMAT = "mscvision.model"
FORMAT_VERSION = 1
INPUT_NAME = "input"
CONFORMANCE_CAPS = {"tensor_max_abs": 1e-3, "probability_max_abs": 0.05}  # loosest tolerances a model may state
MAX_IMAGE_SIDE_CAP = 16384  # px: one float32 channel of that square is 1 GiB; beyond it is a typo, not a field


class ModelInconsistent(ValueError):
    """The metadata contradicts itself or states values no model can have."""


def probability_output(task: str) -> str:
    return f"probabilities.{task}"


def logits_output(task: str) -> str:
    return f"logits.{task}"  # reserved: raw logits, before the temperature


FEATURES_OUTPUT = "features"  # reserved: the penultimate feature vector
# The learned OOD score, float32 (N,), higher = more unusual (issue 16): optional, declared in the
# metadata's ``ood.learned``; a model exported before it (or without a val split) has none.
OOD_OUTPUT = "ood.score"


@dataclass(frozen=True)
class TaskInfo:
    name: str
    classes: tuple[str, ...]  # in output order
    temperature: float  # already applied inside the graph: never divide by it again
    threshold: float  # top-class probability below which the decision is "review"
    # the threshold's certificate (core/selective.py), absent in older models: certified False means
    # no threshold met the target accuracy, and every image goes to review
    abstention: dict | None = None

    @property
    def abstains_on_all(self) -> bool:
        return self.abstention is not None and self.abstention.get("certified") is not True


@dataclass(frozen=True)
class ModelMetadata:
    tasks: tuple[TaskInfo, ...]
    spec: PreprocessSpec
    max_input_side: int  # larger decoded images are refused (tiling comes later)
    training_bit_depths: tuple[int, ...]
    precision: str
    raw: dict  # the whole document, for `info` and provenance

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.spec.in_channels, *self.spec.size)


def parse_metadata(text: str | None, source: str = "model") -> ModelMetadata:
    """The JSON document → ``ModelMetadata``; ``ModelError`` with the fix when it is unusable."""
    if not text:
        raise ModelError(f"{source}: carries no '{METADATA_KEY}' metadata, so it is not an mscvision model "
                         "(or was re-saved by a tool that dropped it). Fix: export it with `mscvision export`.")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{source}: its '{METADATA_KEY}' metadata is not valid JSON ({exc}).") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ModelError(f"{source}: metadata format is not {FORMAT!r}.")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{source}: metadata format version {raw.get('format_version')!r} is not supported "
                         f"(this mscvision reads version {FORMAT_VERSION}). Fix: install the mscvision "
                         "version that exported the model, or re-export it with this one.")
    try:
        return _from_raw(raw)
    except ModelInconsistent as exc:
        raise ModelError(f"{source}: metadata is inconsistent: {exc}. Fix: re-export the model with "
                         "`mscvision export`; never edit the metadata by hand.") from exc
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise ModelError(f"{source}: metadata is incomplete or malformed ({type(exc).__name__}: {exc}).") from exc


def _from_raw(raw: dict) -> ModelMetadata:
    # lists only: tuple("ab") would read a string as the classes ('a', 'b')
    tasks = tuple(TaskInfo(t["name"], tuple(_list(t["classes"], "classes")), float(t["temperature"]),
                           float(t["threshold"]), _abstention(t.get("abstention")))
                  for t in _list(raw["tasks"], "tasks"))
    if not tasks:
        raise ValueError("no tasks")
    if raw.get("temperature_applied_in_graph") is not True:
        raise ValueError("temperature_applied_in_graph must be true")
    spec = PreprocessSpec.from_dict(raw["preprocess"])
    inp = raw["input"]
    if (inp["channels"], inp["height"], inp["width"]) != (spec.in_channels, *spec.size) or inp["dtype"] != "float32":
        raise ValueError(f"input {inp} disagrees with the preprocessing spec")
    metadata = ModelMetadata(tasks, spec, inp["max_image_side"], tuple(inp.get("training_bit_depths", ())),
                             str(raw["precision"]), raw)
    problems = metadata_problems(metadata)
    if problems:
        raise ModelInconsistent("; ".join(problems))
    return metadata


def _abstention(value: object) -> dict | None:
    if value is not None and not isinstance(value, dict):
        raise ModelInconsistent(f"a task's abstention is {type(value).__name__} {value!r}, not an object")
    return value


def metadata_problems(metadata: ModelMetadata) -> list[str]:
    """Every way the metadata is unusable on its own (without the graph); empty when it is sound."""
    return [*_task_problems(metadata.tasks), *_spec_problems(metadata.spec),
            *_side_problems(metadata.max_input_side, metadata.spec.size),
            *_conformance_problems(metadata.raw.get("conformance"))]


def _task_problems(tasks: tuple[TaskInfo, ...]) -> list[str]:
    names = [t.name for t in tasks]
    problems = [f"task name {n!r} appears {names.count(n)} times" for n in dict.fromkeys(names) if names.count(n) > 1]
    for t in tasks:
        if not isinstance(t.name, str) or not t.name:
            problems.append(f"task name {t.name!r} is not a non-empty string")
        if len(t.classes) < 2 or not all(isinstance(c, str) and c for c in t.classes):
            problems.append(f"task {t.name!r}: classes {list(t.classes)} must be at least 2 non-empty strings")
        repeated = sorted({c for c in t.classes if t.classes.count(c) > 1})
        if repeated:
            problems.append(f"task {t.name!r} lists class(es) {repeated} more than once")
        if not 0.0 <= t.threshold <= 1.0:  # also false for NaN
            problems.append(f"task {t.name!r}: threshold {t.threshold} is not in [0, 1]")
        if not (math.isfinite(t.temperature) and t.temperature > 0):
            problems.append(f"task {t.name!r}: temperature {t.temperature} is not a finite number > 0")
    return problems


def _spec_problems(spec: PreprocessSpec) -> list[str]:
    problems = []
    if not _positive_int(spec.in_channels) or len(spec.size) != 2 or not all(_positive_int(s) for s in spec.size):
        problems.append(f"preprocess in_channels={spec.in_channels!r}, size={list(spec.size)} must be positive integers")
    if spec.channels is not None and not all(_int(c) and c >= 0 for c in spec.channels):
        # numpy would read a negative index from the end: a silent wrong channel, not an error
        problems.append(f"preprocess.channels={list(spec.channels)} must be 0-based indices >= 0")
    if spec.mean is not None and not all(_finite(m) for m in spec.mean):
        problems.append(f"preprocess.mean={list(spec.mean)} must be finite numbers")
    if spec.std is not None and not all(_finite(s) and s > 0 for s in spec.std):
        problems.append(f"preprocess.std={list(spec.std)} must be finite numbers > 0")
    if spec.pixel_size_um is not None and not (_finite(spec.pixel_size_um) and spec.pixel_size_um > 0):
        problems.append(f"preprocess.pixel_size_um={spec.pixel_size_um!r} must be a finite number > 0 (or null)")
    return problems


def _side_problems(side: object, size: tuple[int, ...]) -> list[str]:
    input_side = max((s for s in size if _positive_int(s)), default=1)
    if not _positive_int(side) or not input_side <= side <= MAX_IMAGE_SIDE_CAP:
        return [f"input.max_image_side={side!r} must be an integer from the model's input side ({input_side}) "
                f"to {MAX_IMAGE_SIDE_CAP} px"]
    return []


def _conformance_problems(conformance: object) -> list[str]:
    """Export records the verify rule in the model (not only in the editable vectors file). Bounds:
    a tensor is pure float32 numpy (export states 1e-5) and int8 kernels stay within 1e-2; looser
    than these, a verify PASS would no longer mean "reproduces the export"."""
    if conformance is None:
        return []
    if not isinstance(conformance, dict):
        return [f"conformance={conformance!r} must be an object"]
    problems = [f"conformance.{key}={conformance.get(key)!r} must be a finite number in (0, {cap:g}]"
                for key, cap in CONFORMANCE_CAPS.items()
                if not (_finite(conformance.get(key)) and 0 < conformance[key] <= cap)]
    if "min_cases" in conformance and not _positive_int(conformance["min_cases"]):
        problems.append(f"conformance.min_cases={conformance['min_cases']!r} must be an integer >= 1")
    return problems


def _list(value: object, key: str) -> list:
    if not isinstance(value, list):
        raise ModelInconsistent(f"{key} is {type(value).__name__} {value!r}, not a list")
    return value


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value: object) -> bool:
    return _int(value) and value > 0


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
