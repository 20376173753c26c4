"""Write conformance vectors beside an exported model (read by ``runtime.verify``).

The expected values come from the exported file run by the runtime on this machine, so they say
what a conforming station must reproduce, not what torch computed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from mscvision.core.fileio import write_json_atomic
from mscvision.runtime.inputs import load_input
from mscvision.runtime.model import load_model
from mscvision.runtime.station import station_info
from mscvision.runtime.verify import PROBABILITY_TOLERANCE, TENSOR_TOLERANCE, VECTORS_FORMAT, VECTORS_VERSION

N_VECTORS = 4
MIN_MARGIN = 0.1  # top-1 minus top-2: images near a tie would flip on harmless kernel differences


def write_vectors(model_path: Path, folder: Path, candidates: list[str], n: int = N_VECTORS) -> Path:
    model = load_model(model_path, threads=1, device="cpu")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    cases = []
    for path in _pick(model, candidates, n):
        cases.append(_write_case(model, folder, Path(path), len(cases)))
    write_json_atomic(folder / "vectors.json", {
        "format": VECTORS_FORMAT, "version": VECTORS_VERSION,
        "model_file": model_path.name, "model_sha256": model.sha256, "precision": model.metadata.precision,
        "tensor_format": "raw little-endian float32, C-order, shape (C, h, w)",
        "tolerances": {"tensor_max_abs": TENSOR_TOLERANCE,
                       "probability_max_abs": PROBABILITY_TOLERANCE[model.metadata.precision],
                       "top1": "must match"},
        "written_on": station_info(1, model.providers),
        "cases": cases,
    })
    return folder


def _pick(model, candidates: list[str], n: int) -> list[str]:
    """The first ``n`` candidates whose every task has a clear top class (or the first ``n``)."""
    clear = []
    for path in candidates:
        probs = model.predict(load_input(path, model.metadata)[None])
        if all(_margin(p[0]) >= MIN_MARGIN for p in probs.values()):
            clear.append(path)
        if len(clear) == n:
            return clear
    return (clear + [c for c in candidates if c not in clear])[:n]


def _margin(p: np.ndarray) -> float:
    top2 = np.sort(p)[-2:]
    return float(top2[1] - top2[0])


def _write_case(model, folder: Path, source: Path, i: int) -> dict:
    image = f"{i:02d}_{source.name}"
    shutil.copyfile(source, folder / image)  # the bytes as stored: decoding is part of what is checked
    tensor = load_input(folder / image, model.metadata)
    tensor_file = f"{i:02d}.input.f32"
    tensor.astype("<f4").tofile(folder / tensor_file)
    probs = model.predict(tensor[None])
    return {"image": image, "tensor": tensor_file, "shape": list(tensor.shape),
            "probabilities": {t: [float(v) for v in p[0]] for t, p in probs.items()},
            "labels": {t.name: t.classes[int(probs[t.name][0].argmax())] for t in model.metadata.tasks}}
