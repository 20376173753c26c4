"""End to end: `mscvision predict` over a folder of image files vs the bare ONNX session on the
same images already decoded and preprocessed (same total thread budget)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from mscvision.core.imageio import decode_image, write_image
from mscvision.core.preprocess import preprocess
from mscvision.runtime.model import load_model
from mscvision.runtime.predict import Tally, predict_files, prediction_columns, write_rows


def write_image_folder(folder: Path, sources: list[Path], n: int) -> list[Path]:
    """``n`` PNG files cycling through ``sources`` (real images), so decode cost is realistic."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i:05d}.png"
        if not path.exists():
            write_image(path, decode_image(sources[i % len(sources)]).array)
        paths.append(path)
    return paths


def predict_vs_session(model_path: Path, paths: list[Path], threads: int, batch_size: int = 32,
                       decode_workers: int = 1) -> dict:
    """Images/s of the predict pipeline (decode + checks + preprocess + run + rows) vs the session alone."""
    model = load_model(model_path, threads=threads, device="cpu")
    spec = model.metadata.spec
    tensors = np.stack([preprocess(decode_image(p).array, spec) for p in paths])
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
