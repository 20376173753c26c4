"""CPU inference: PyTorch eager vs onnxruntime fp32 / fp16 / int8, same model, same thread budget."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from mscvision.runtime.model import load_model


def _percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def _measure(run_batch, x1: np.ndarray, x32: np.ndarray, n_latency: int, n_throughput: int) -> dict:
    for _ in range(5):
        run_batch(x1)
    latencies = []
    for _ in range(n_latency):
        start = time.perf_counter()
        run_batch(x1)
        latencies.append(time.perf_counter() - start)
    run_batch(x32)
    start = time.perf_counter()
    for _ in range(n_throughput):
        run_batch(x32)
    throughput = n_throughput * len(x32) / (time.perf_counter() - start)
    return {"b1": _percentiles(latencies), "b32_img_s": round(throughput, 1)}


def model_flops(net: torch.nn.Module, shape: tuple[int, ...]) -> float:
    """FLOPs (2 x MACs) of one image, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, *shape))
    return float(counter.get_total_flops())


def torch_eager(net: torch.nn.Module, shape: tuple[int, ...], threads: int, quick: bool) -> dict:
    """Eager PyTorch in ``inference_mode`` at its best thread count up to ``threads``."""
    net = net.eval()
    x1, x32 = torch.randn(1, *shape), torch.randn(32, *shape)
    best = None
    for n in sorted({1, threads}):
        torch.set_num_threads(n)

        def run(x):
            with torch.inference_mode():
                net(x)

        figures = _measure(run, x1, x32, 30 if quick else 200, 3 if quick else 15)
        figures["threads"] = n
        if best is None or figures["b1"]["p50_ms"] < best["b1"]["p50_ms"]:
            best = {**figures, "b32_img_s": max(figures["b32_img_s"], best["b32_img_s"] if best else 0)}
    torch.set_num_threads(threads)
    return best


def onnxruntime_session(path: Path, shape: tuple[int, ...], threads: int, quick: bool) -> dict:
    model = load_model(path, threads=threads, device="cpu")
    x1 = np.random.default_rng(0).standard_normal((1, *shape), dtype=np.float32)
    x32 = np.random.default_rng(1).standard_normal((32, *shape), dtype=np.float32)
    figures = _measure(model.predict, x1, x32, 30 if quick else 200, 3 if quick else 15)
    figures["threads"] = threads
    return figures
