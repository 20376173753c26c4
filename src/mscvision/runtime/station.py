"""What the station's runtime is: onnxruntime version, execution providers, CPU flags, threads.

int8 kernels differ across CPUs (VNNI / AVX-512 / NEON dot products), so these facts are recorded
at export time (where the parity figures were measured) and printed by `mscvision verify`.
"""

from __future__ import annotations

import os
import platform

# CPU features that change which onnxruntime kernels run (and so the last bits of int8 results)
_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
          "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "asimddp", "sve", "i8mm")
_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def cpu_flags() -> list[str]:
    """The relevant CPU feature flags this machine reports (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            words = set()
            for line in f:
                if line.lower().startswith(("flags", "features")):
                    words.update(line.split(":", 1)[1].split())
    except OSError:
        return []
    return [flag for flag in _FLAGS if flag in words]


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS reports one, e.g. in a container)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
