"""What the station's runtime is: onnxruntime version, execution providers, CPU flags (core.machine), threads.

int8 kernels differ across CPUs (VNNI / AVX-512 / NEON dot products), so these facts are recorded
at export time (where the parity figures were measured) and printed by `mscvision verify`.
"""

from __future__ import annotations

import os
import platform

from mscvision.core.machine import cpu_flags  # the machine facts live in core: every layer reads them

_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def choose_providers(device: str = "auto") -> list[str]:
    """Execution providers in priority order: GPU ones only where onnxruntime-gpu offers them."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    gpu = [p for p in _GPU_PROVIDERS if p in available]
    if device == "gpu" and not gpu:
        from mscvision.core.errors import ConfigError

        raise ConfigError(f"--device gpu: this onnxruntime offers only {available}. Fix: "
                          "pip uninstall onnxruntime && pip install onnxruntime-gpu (with CUDA installed).")
    return [*gpu, "CPUExecutionProvider"]


def session_options(threads: int = 0):
    """Session options with ``threads`` intra-op threads (0 = onnxruntime's default: all cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(0, int(threads))
    options.inter_op_num_threads = 1  # the graph is a chain: parallelism is inside each op
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle intra-op threads must sleep, not spin: between batches the CPU belongs to decoding
    # (py-spy on 2 cores: spinning cut `predict` from ~145 to ~125 images/s).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def station_info(threads: int = 0, providers: list[str] | None = None) -> dict:
    import onnxruntime as ort

    return {"onnxruntime": ort.__version__, "machine": platform.machine(), "system": platform.system(),
            "cpu_flags": cpu_flags(), "cpu_count": os.cpu_count(),
            "intra_op_threads": threads or "default (all cores)",
            "providers": providers or ["CPUExecutionProvider"]}
