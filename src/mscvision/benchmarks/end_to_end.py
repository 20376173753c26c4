"""End to end: `mscvision predict` over a folder of image files vs the bare ONNX session on the
same images already decoded and preprocessed (same total thread budget)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from mscvision.core.imageio import decode_image, write_image
from mscvision.runtime.inputs import load_input
from mscvision.runtime.metadata import ModelMetadata
from mscvision.runtime.model import load_model
from mscvision.runtime.predict import Tally, predict_files, prediction_columns, write_rows


def write_image_folder(folder: Path, sources: list[Path], n: int) -> list[Path]:
    """``n`` files cycling through ``sources`` (real images), so decode cost is realistic: PNG, or
    TIFF for TIFF sources, which keeps their pixel size (``predict`` rescales by it)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        source = sources[i % len(sources)]
        suffix = ".tif" if source.suffix.lower() in (".tif", ".tiff") else ".png"
        path = folder / f"img{i:05d}{suffix}"
        if not path.exists():
            decoded = decode_image(source)
            write_image(path, decoded.array, decoded.pixel_size_um)
        paths.append(path)
    return paths


def session_inputs(metadata: ModelMetadata, paths: list[Path]) -> np.ndarray:
    """The bare session's batch: each file through the runtime's own load path (decode, input checks,
    preprocess with the file's pixel size), so both sides of the ratio compute the same tensors."""
    return np.stack([load_input(p, metadata) for p in paths])


def predict_vs_session(model_path: Path, paths: list[Path], threads: int, batch_size: int = 32,
                       decode_workers: int = 1) -> dict:
    """Images/s of the predict pipeline (decode + checks + preprocess + run + rows) vs the session alone."""
    model = load_model(model_path, threads=threads, device="cpu")
    tensors = session_inputs(model.metadata, paths)
    model.predict(tensors[:batch_size])
    start = time.perf_counter()
    for i in range(0, len(tensors), batch_size):
        model.predict(tensors[i:i + batch_size])
    session_rate = len(tensors) / (time.perf_counter() - start)

    tally = Tally()
    rows = predict_files(model, [str(p) for p in paths], batch_size=batch_size, workers=decode_workers)
    start = time.perf_counter()
    write_rows(rows, prediction_columns(model.metadata), paths[0].parent / "predictions.csv", tally)
    predict_rate = len(paths) / (time.perf_counter() - start)
    assert tally.counts["error"] == 0, tally.line()
    return {"n_images": len(paths), "predict_img_s": round(predict_rate, 1),
            "session_img_s": round(session_rate, 1), "ratio": round(predict_rate / session_rate, 3),
            "threads": threads, "decode_workers": decode_workers, "batch_size": batch_size}


def gate_cost(model_path: Path, paths: list[Path], threads: int, work: Path, rounds: int = 3,
              batch_size: int = 32) -> dict:
    """`predict` throughput with the OOD gate vs without it (the same file with its ``ood`` metadata
    block removed: no image checks, no learned-score judging), rounds alternating, median of each."""
    import json

    import onnx

    from mscvision.runtime.metadata import METADATA_KEY

    gated = load_model(model_path, threads=threads, device="cpu")
    if gated.metadata.raw.get("ood") is None:
        return {"ratio": None, "note": f"{model_path.name} has no OOD gate"}
    proto = onnx.load(str(model_path))
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = json.dumps({**json.loads(prop.value), "ood": None})
    plain_path = work / "no-gate.onnx"
    onnx.save_model(proto, str(plain_path))
    plain = load_model(plain_path, threads=threads, device="cpu")
    rates: dict[str, list[float]] = {"gated": [], "plain": []}
    files = [str(p) for p in paths]
    for _ in range(rounds):
        for name, model in (("plain", plain), ("gated", gated)):
            start = time.perf_counter()
            rows = list(predict_files(model, files, batch_size=batch_size, workers=1))
            rates[name].append(len(rows) / (time.perf_counter() - start))
    gated_rate, plain_rate = float(np.median(rates["gated"])), float(np.median(rates["plain"]))
    return {"n_images": len(paths), "rounds": rounds, "gated_img_s": round(gated_rate, 1),
            "no_gate_img_s": round(plain_rate, 1), "ratio": round(gated_rate / plain_rate, 3)}
