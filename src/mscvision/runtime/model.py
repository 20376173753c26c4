"""Load an exported model: one ONNX file, its metadata validated, its SHA-256 recorded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mscvision.core.errors import ModelError
from mscvision.core.fileio import sha256_file
from mscvision.runtime.metadata import INPUT_NAME, METADATA_KEY, ModelMetadata, parse_metadata, probability_output
from mscvision.runtime.station import choose_providers, session_options


@dataclass
class Model:
    path: Path
    sha256: str  # of the file as loaded: what an audit record names
    metadata: ModelMetadata
    session: object  # onnxruntime.InferenceSession
    threads: int

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def predict(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Preprocessed float32 (N, C, h, w) → probabilities per task, (N, classes), temperature applied."""
        expected = self.metadata.input_shape
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected or batch.dtype != np.float32:
            raise ValueError(f"input batch {batch.dtype}{tuple(batch.shape)}; expected float32 (N, {expected})")
        names = [probability_output(t.name) for t in self.metadata.tasks]
        outputs = self.session.run(names, {INPUT_NAME: batch})
        return {t.name: out for t, out in zip(self.metadata.tasks, outputs)}


def read_metadata(path: str | Path) -> ModelMetadata:
    """Metadata alone, without building a session (for `info`)."""
    return _open(Path(path), threads=1, device="cpu")[1]


def load_model(path: str | Path, threads: int = 0, device: str = "auto") -> Model:
    path = Path(path)
    session, metadata = _open(path, threads, device)
    _check_graph(session, metadata, path)
    return Model(path, sha256_file(path), metadata, session, threads)


def _open(path: Path, threads: int, device: str):
    import onnxruntime as ort

    if not path.is_file():
        raise ModelError(f"{path}: no such model file.")
    try:
        session = ort.InferenceSession(str(path), sess_options=session_options(threads),
                                       providers=choose_providers(device))
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
        raise ModelError(f"{path}: onnxruntime cannot load it ({type(exc).__name__}: {exc}).") from exc
    props = session.get_modelmeta().custom_metadata_map
    return session, parse_metadata(props.get(METADATA_KEY), str(path))


def _check_graph(session, metadata: ModelMetadata, path: Path) -> None:
    """The graph must have the input and outputs the metadata promises."""
    inputs = {i.name: i for i in session.get_inputs()}
    if INPUT_NAME not in inputs or inputs[INPUT_NAME].type != "tensor(float)":
        raise ModelError(f"{path}: the graph has no float32 input named {INPUT_NAME!r}.")
    outputs = {o.name for o in session.get_outputs()}
    missing = [probability_output(t.name) for t in metadata.tasks if probability_output(t.name) not in outputs]
    if missing:
        raise ModelError(f"{path}: the graph lacks output(s) {missing} that its metadata lists.")
