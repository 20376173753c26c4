"""Load an exported model: one ONNX file, its metadata validated against itself and its graph.

The file is read once; the SHA-256 is of those bytes and the session is built from the same bytes,
so the hash an audit record names is the hash of what ran (a file replaced between hashing and
loading cannot slip in). Building from bytes also means onnxruntime cannot pick up a side file:
the contract is one file, and external-data tensors are refused before onnxruntime sees them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mscvision.core.errors import ConfigError, ModelError
from mscvision.runtime.gate import gate_problems, learned_output
from mscvision.runtime.metadata import INPUT_NAME, METADATA_KEY, ModelMetadata, parse_metadata, probability_output
from mscvision.runtime.onnxfile import ProtobufError, external_tensors, metadata_props
from mscvision.runtime.station import choose_providers, session_options

MAX_MODEL_BYTES = 2**31 - 1  # protobuf's limit: a larger "model" is not one ONNX file
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class GraphPort:
    """One graph input or output as onnxruntime reports it: dims are ints, or a name/None when dynamic."""

    name: str
    type: str
    shape: tuple


@dataclass
class Model:
    path: Path
    sha256: str  # of the exact bytes the session was built from: what an audit record names
    metadata: ModelMetadata
    session: object  # onnxruntime.InferenceSession
    threads: int

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def predict(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Preprocessed float32 (N, C, h, w) → probabilities per task, (N, classes), temperature applied."""
        return self._run(batch, [])[0]

    def predict_with_ood(self, batch: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """``predict`` plus the learned OOD score per image, (N,), from the same graph run (the output
        the metadata's OOD gate names, ``ood.score``); None when the model has no learned score."""
        output = learned_output(self.metadata)
        if output is None:
            return self.predict(batch), None
        probs, (scores,) = self._run(batch, [output])
        if scores.shape != (len(batch),):
            raise ModelError(f"{self.path}: output {output} has shape {scores.shape}, not ({len(batch)},).")
        return probs, scores

    def _run(self, batch: np.ndarray, extra: list[str]) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        expected = self.metadata.input_shape
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected or batch.dtype != np.float32:
            raise ValueError(f"input batch {batch.dtype}{tuple(batch.shape)}; expected float32 (N, {expected})")
        names = [probability_output(t.name) for t in self.metadata.tasks]
        outputs = self.session.run(names + extra, {INPUT_NAME: batch})
        for task, out in zip(self.metadata.tasks, outputs):
            if out.shape != (len(batch), len(task.classes)):  # the load checks make this a should-never
                raise ModelError(f"{self.path}: output {probability_output(task.name)} has shape {out.shape}, "
                                 f"not ({len(batch)}, {len(task.classes)}) for classes {list(task.classes)}.")
        return {t.name: out for t, out in zip(self.metadata.tasks, outputs)}, outputs[len(names):]

    def outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every graph output by name (``probabilities.TASK``, ``logits.TASK``, ``features``) for the
        same preprocessed batch ``predict`` takes: evaluation needs the logits the station ignores."""
        names = [port.name for port in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, {INPUT_NAME: batch})))


def read_metadata(path: str | Path) -> ModelMetadata:
    """Metadata alone, read from the file's protobuf without building a session (for `info`)."""
    return inspect_model(path)[0]


def inspect_model(path: str | Path, expect_sha256: str | None = None) -> tuple[ModelMetadata, str]:
    """(metadata, SHA-256) of a model file, read once, without building a session."""
    path = Path(path)
    data, sha256 = _read_bytes(path, expect_sha256)
    return _metadata_from_bytes(data, path), sha256


def load_model(path: str | Path, threads: int = 0, device: str = "auto",
               expect_sha256: str | None = None) -> Model:
    """The model, checked against itself and its graph; ``ModelError`` names what is wrong.

    ``expect_sha256`` (64 hex digits): refuse any file whose bytes hash otherwise.
    """
    path = Path(path)
    data, sha256 = _read_bytes(path, expect_sha256)
    metadata = _metadata_from_bytes(data, path)
    session = _session(data, path, threads, device)
    inputs, outputs = graph_ports(session)
    problems = graph_problems(metadata, inputs, outputs)
    if problems:
        raise ModelError(f"{path}: the graph does not match its metadata: {'; '.join(problems)}. "
                         "Fix: re-export the model with `mscvision export`.")
    return Model(path, sha256, metadata, session, threads)


def normalise_sha256(text: str) -> str:
    """A SHA-256 as given on a command line → 64 lower-case hex digits; ``ConfigError`` otherwise."""
    value = text.strip().lower()
    if not _SHA256.fullmatch(value):
        raise ConfigError(f"--expect-sha256 {text!r} is not a SHA-256 (64 hex digits). Fix: copy it from "
                          "`mscvision info MODEL` or `sha256sum MODEL`.")
    return value


def _read_bytes(path: Path, expect_sha256: str | None) -> tuple[bytes, str]:
    expected = normalise_sha256(expect_sha256) if expect_sha256 is not None else None
    if not path.is_file():
        what = "not a regular file" if path.exists() else "no such model file"
        raise ModelError(f"{path}: {what}.")
    size = path.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise ModelError(f"{path}: {size} bytes, over the 2 GiB an ONNX protobuf can hold: not a one-file model.")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot be read ({exc.strerror or exc}).") from exc
    sha256 = hashlib.sha256(data).hexdigest()
    if expected is not None and sha256 != expected:
        raise ModelError(f"{path}: SHA-256 {sha256} is not the expected {expected}; refusing to use another "
                         "model than the one approved.")
    return data, sha256


def _metadata_from_bytes(data: bytes, path: Path) -> ModelMetadata:
    try:
        props = metadata_props(data)
        external = external_tensors(data)
    except (ProtobufError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not a readable ONNX file ({exc}).") from exc
    if external:
        raise ModelError(f"{path}: {len(external)} tensor(s) keep their data in an external side file "
                         f"({', '.join(external[:3])}{', …' if len(external) > 3 else ''}); an mscvision model "
                         "is one self-contained file. Fix: re-export it with `mscvision export`.")
    return parse_metadata(props.get(METADATA_KEY), str(path))


def _session(data: bytes, path: Path, threads: int, device: str):
    import onnxruntime as ort

    try:  # from the bytes already hashed: onnxruntime never opens the path (nor anything beside it)
        return ort.InferenceSession(data, sess_options=session_options(threads), providers=choose_providers(device))
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
        raise ModelError(f"{path}: onnxruntime cannot load it ({type(exc).__name__}: {exc}).") from exc


def graph_ports(session) -> tuple[dict[str, GraphPort], dict[str, GraphPort]]:
    """The session's inputs and outputs by name."""
    def ports(items) -> dict[str, GraphPort]:
        return {i.name: GraphPort(i.name, i.type, tuple(i.shape)) for i in items}

    return ports(session.get_inputs()), ports(session.get_outputs())


def graph_problems(metadata: ModelMetadata, inputs: dict[str, GraphPort], outputs: dict[str, GraphPort]) -> list[str]:
    """How the graph disagrees with the metadata: the input's dynamic batch and static (C, h, w),
    each task's output width, and the OOD gate (sound, and its learned score's output present)."""
    problems = []
    port = inputs.get(INPUT_NAME)
    if port is None or port.type != "tensor(float)":
        problems.append(f"no float32 input named {INPUT_NAME!r}")
    elif len(port.shape) != 4 or tuple(port.shape[1:]) != metadata.input_shape:
        problems.append(f"input {INPUT_NAME!r} has dims {list(port.shape)}, the metadata says "
                        f"(N, {', '.join(map(str, metadata.input_shape))})")
    elif not isinstance(port.shape[0], (str, type(None))):  # a fixed batch fails on any other batch size
        problems.append(f"input {INPUT_NAME!r} has dims {list(port.shape)}: the input's batch dimension must be "
                        "dynamic; re-export")
    for task in metadata.tasks:
        name = probability_output(task.name)
        port = outputs.get(name)
        if port is None:
            problems.append(f"no output {name!r} for task {task.name!r}")
        elif port.type != "tensor(float)" or len(port.shape) != 2 or port.shape[-1] != len(task.classes):
            problems.append(f"output {name!r} is {port.type}{list(port.shape)}, but task {task.name!r} lists "
                            f"{len(task.classes)} classes {list(task.classes)} (expected float (N, {len(task.classes)}))")
    return problems + gate_problems(metadata, outputs)
