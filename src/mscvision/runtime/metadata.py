"""The metadata contract of an exported model (DESIGN.md "The model artifact contract").

Export writes this JSON document into the ONNX file's ``metadata_props`` under ``METADATA_KEY``;
the runtime parses it here and refuses anything it does not understand, so a station never runs a
model whose preprocessing or class order it would have to guess.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from mscvision.core.errors import ConfigError, ModelError
from mscvision.core.preprocess import PreprocessSpec

METADATA_KEY = "mscvision"
FORMAT = "mscvision.model"
FORMAT_VERSION = 1
INPUT_NAME = "input"


def probability_output(task: str) -> str:
    return f"probabilities.{task}"


def logits_output(task: str) -> str:
    return f"logits.{task}"  # reserved: raw logits, before the temperature


FEATURES_OUTPUT = "features"  # reserved: the penultimate feature vector


@dataclass(frozen=True)
class TaskInfo:
    name: str
    classes: tuple[str, ...]  # in output order
    temperature: float  # already applied inside the graph: never divide by it again
    threshold: float  # top-class probability below which the decision is "review"


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
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise ModelError(f"{source}: metadata is incomplete or malformed ({type(exc).__name__}: {exc}).") from exc


def _from_raw(raw: dict) -> ModelMetadata:
    tasks = tuple(TaskInfo(t["name"], tuple(t["classes"]), float(t["temperature"]), float(t["threshold"]))
                  for t in raw["tasks"])
    if not tasks:
        raise ValueError("no tasks")
    if raw.get("temperature_applied_in_graph") is not True:
        raise ValueError("temperature_applied_in_graph must be true")
    spec = PreprocessSpec.from_dict(raw["preprocess"])
    inp = raw["input"]
    if (inp["channels"], inp["height"], inp["width"]) != (spec.in_channels, *spec.size) or inp["dtype"] != "float32":
        raise ValueError(f"input {inp} disagrees with the preprocessing spec")
    return ModelMetadata(tasks, spec, int(inp["max_image_side"]), tuple(inp.get("training_bit_depths", ())),
                         str(raw["precision"]), raw)
