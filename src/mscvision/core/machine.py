"""Facts about the machine this process runs on: CPU feature flags, CPU model and clock, usable cores.

In `core` (stdlib only) because every layer needs them: the station prints them (`verify`), training
picks its precision from them, export records where parity was measured, the benchmark states its
machine. One reader of /proc/cpuinfo for all of them.
"""

from __future__ import annotations

import os

# CPU features that change which kernels run (onnxruntime's int8 paths, torch's bf16), and so the
# last bits of results or the speed
_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
          "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "asimddp", "sve", "i8mm")


def _cpuinfo() -> list[tuple[str, str]]:
    """(key, value) lines of /proc/cpuinfo (Linux); empty where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return [(key.strip(), value.strip()) for key, sep, value in (line.partition(":") for line in f) if sep]
    except OSError:
        return []


def cpu_flags() -> list[str]:
    """The relevant CPU feature flags this machine reports (x86 "flags", ARM "Features"; empty elsewhere)."""
    words = set()
    for key, value in _cpuinfo():
        if key.lower() in ("flags", "features"):
            words.update(value.split())
    return [flag for flag in _FLAGS if flag in words]


def cpu_model() -> tuple[str | None, float | None]:
    """(model name, clock in MHz as the OS reports it, not boost) of the first CPU; None where unknown."""
    model = mhz = None
    for key, value in _cpuinfo():
        if key == "model name" and model is None:
            model = value
        elif key == "cpu MHz" and mhz is None:
            mhz = float(value)
    return model, mhz


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS reports one, e.g. in a container)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
