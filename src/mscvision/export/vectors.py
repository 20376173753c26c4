"""Write conformance vectors beside an exported model (read by ``runtime.verify``).

The expected values come from the exported file run by onnxruntime, so they say what a conforming
station must reproduce, not what torch computed. For int8 they are the arithmetic the QDQ graph
defines: the graph run with optimisations off (DequantizeLinear, then a float Conv), where no CPU's
integer kernel shortcuts apply; a station whose fused int8 kernels compute something else fails.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from mscvision.core.fileio import write_json_atomic
from mscvision.runtime.inputs import load_input
from mscvision.runtime.model import Model, load_model
from mscvision.runtime.station import station_info
from mscvision.runtime.verify import VECTORS_FORMAT, VECTORS_VERSION, verify_model

# int8 gets many vectors: a kernel that saturates changes a few images in a hundred, and each vector
# is one more chance to catch it. fp32 / fp16 kernels differ only by rounding: a few per class do.
N_VECTORS = {"fp32": 8, "fp16": 8, "int8": 32}
MIN_MARGIN = 0.1  # top-1 minus top-2: images near a tie would flip on harmless kernel differences
UNFUSED = "onnxruntime with graph optimisations disabled: the QDQ graph as written, no fused int8 kernels"


def vector_count(precision: str, n_candidates: int) -> int:
    """How many vectors export writes for ``precision``: also the model's ``conformance.min_cases``,
    so that verify refuses a thinned vectors folder (fewer held-out images than N_VECTORS: all of them)."""
    return min(N_VECTORS[precision], n_candidates)


def write_vectors(model_path: Path, folder: Path, candidates: list[str], n: int | None = None) -> dict:
    """Write ``folder``; returns vectors.json's ``self_check``: ``runtime.verify.verify_model`` run
    here on the written folder (this machine's fused kernels, exactly as ``verify`` runs them)."""
    model = load_model(model_path, threads=1, device="cpu")
    precision = model.metadata.precision
    reference = _unfused(model) if precision == "int8" else model
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    cases = [_write_case(reference, folder, Path(path), i)
             for i, path in enumerate(_pick(reference, candidates, n or vector_count(precision, len(candidates))))]
    conformance = model.metadata.raw["conformance"]
    doc = {
        "format": VECTORS_FORMAT, "version": VECTORS_VERSION,
        "model_file": model_path.name, "model_sha256": model.sha256, "precision": precision,
        "tensor_format": "raw little-endian float32, C-order, shape (C, h, w)",
        "expected_from": UNFUSED if precision == "int8" else "onnxruntime, default graph optimisations",
        # a copy for people: verify takes the tolerances from the model's metadata, not from this file
        "tolerances": {**conformance, "note": "copy of the model metadata's 'conformance' (authoritative)"},
        "written_on": station_info(1, model.providers),
        "cases": cases,
    }
    write_json_atomic(folder / "vectors.json", doc)
    report = verify_model(model, folder)  # the one pass rule: what `mscvision verify` says here
    check = {"n_cases": report.cases, "probability_max_abs": report.probability_max_abs,
             "passed": report.passed, "failures": report.failures,
             "checked_by": "runtime.verify.verify_model on this folder, on the machine that wrote it"}
    write_json_atomic(folder / "vectors.json", {**doc, "self_check": check})
    return check


def _unfused(model: Model) -> Model:
    """The same hashed bytes in a session that runs every node as written (ORT_DISABLE_ALL)."""
    import hashlib

    import onnxruntime as ort

    data = model.path.read_bytes()
    if hashlib.sha256(data).hexdigest() != model.sha256:  # replaced since load: the vectors would lie
        raise RuntimeError(f"{model.path} changed while its vectors were being written")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    return Model(model.path, model.sha256, model.metadata, session, 1)


def _pick(model: Model, candidates: list[str], n: int) -> list[str]:
    """``n`` candidates spread over the classes: round-robin over (task, predicted class), clear calls
    (margin >= MIN_MARGIN) first; near-ties (also spread) only when too few are clear."""
    tops: dict[str, dict[str, int]] = {}
    clear = []
    for start in range(0, len(candidates), 64):
        chunk = candidates[start:start + 64]
        probs = model.predict(np.stack([load_input(path, model.metadata) for path in chunk]))
        for i, path in enumerate(chunk):
            tops[path] = {task: int(p[i].argmax()) for task, p in probs.items()}
            if all(_margin(p[i]) >= MIN_MARGIN for p in probs.values()):
                clear.append(path)
    picked = _round_robin(clear, tops, model, n, [])
    return _round_robin([c for c in candidates if c not in picked], tops, model, n, picked)


def _round_robin(paths: list[str], tops: dict, model: Model, n: int, picked: list[str]) -> list[str]:
    """Append to ``picked`` one path per (task, class) per round until ``n`` or none left."""
    queues = [iter([p for p in paths if tops[p][t.name] == c])
              for t in model.metadata.tasks for c in range(len(t.classes))]
    while queues and len(picked) < n:
        for queue in list(queues):
            path = next((p for p in queue if p not in picked), None)
            if path is None:
                queues.remove(queue)
            elif len(picked) < n:
                picked.append(path)
    return picked


def _margin(p: np.ndarray) -> float:
    top2 = np.sort(p)[-2:]
    return float(top2[1] - top2[0])


def _write_case(model: Model, folder: Path, source: Path, i: int) -> dict:
    image = f"{i:02d}_{source.name}"
    shutil.copyfile(source, folder / image)  # the bytes as stored: decoding is part of what is checked
    tensor = load_input(folder / image, model.metadata)
    tensor_file = f"{i:02d}.input.f32"
    tensor.astype("<f4").tofile(folder / tensor_file)
    probs, score = model.predict_with_ood(tensor[None])
    case = {"image": image, "tensor": tensor_file, "shape": list(tensor.shape),
            "probabilities": {t: [float(v) for v in p[0]] for t, p in probs.items()},
            "labels": {t.name: t.classes[int(probs[t.name][0].argmax())] for t in model.metadata.tasks}}
    return case if score is None else {**case, "ood_score": float(score[0])}
