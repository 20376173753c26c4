"""What machine a benchmark ran on, and its fp32 GEMM limit measured in the same run."""

from __future__ import annotations

import platform
import time
from importlib import metadata

import numpy as np

from mscvision.core.machine import cpu_flags, cpu_model, usable_cores


def cpu_info() -> dict:
    model, mhz = cpu_model()
    return {"model": model or platform.processor() or "unknown", "cores": usable_cores(), "mhz": mhz,
            "flags": cpu_flags()}


def theoretical_fp32_peak(cpu: dict) -> dict:
    """cores x clock x fp32 FLOP/cycle, from the vector ISA; an estimate, with its assumptions stated."""
    if not cpu.get("mhz"):
        return {"gflops": None, "assumption": "clock unknown"}
    amd = "AMD" in cpu["model"]
    if "avx512f" in cpu["flags"]:
        per_cycle = 32 if amd else 64  # Zen 4 runs AVX-512 on 256-bit units; Intel: 2 x 512-bit FMA
    elif "fma" in cpu["flags"]:
        per_cycle = 32  # 2 x 256-bit FMA units
    else:
        per_cycle = 8
    gflops = cpu["cores"] * cpu["mhz"] / 1e3 * per_cycle
    return {"gflops": round(gflops, 1),
            "assumption": f"{cpu['cores']} cores x {cpu['mhz']:.0f} MHz (reported, not boost) x {per_cycle} fp32 FLOP/cycle"}


def installed_package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("numpy", "torch", "torchvision", "lightning", "onnxruntime", "onnx", "albumentations", "mscvision"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def gpu_info() -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}


def best_seconds(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def gemm_gflops(n: int, threads: int, repeats: int = 5) -> dict:
    """Best fp32 n x n GEMM rate of torch, numpy and an onnxruntime MatMul, with ``threads`` threads."""
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    flops = 2.0 * n ** 3
    out = {"n": n, "threads": threads}
    import torch

    torch.set_num_threads(threads)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    out["torch"] = flops / best_seconds(lambda: torch.mm(ta, tb), repeats) / 1e9
    out["numpy"] = flops / best_seconds(lambda: a @ b, repeats) / 1e9  # BLAS threads: its own setting
    session = _ort_matmul_session(n, threads)
    if session is not None:
        out["onnxruntime"] = flops / best_seconds(lambda: session.run(None, {"a": a, "b": b}), repeats) / 1e9
    out = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in out.items()}
    out["best"] = max(v for k, v in out.items() if k in ("torch", "numpy", "onnxruntime"))
    return out


def _ort_matmul_session(n: int, threads: int):
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(),
                                options, providers=["CPUExecutionProvider"])
