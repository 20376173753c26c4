#!/usr/bin/env python
"""CUDA training-path benchmark: images/s in fp32 vs bf16 autocast, NCHW vs channels_last, 0 vs N
loader workers, each fed by the CPU loader (albumentations in the workers), by the device path
(cached images on the GPU, augmented there: data.augment_on=device) and by one batch kept on the GPU.

    python scripts/cuda_check.py [--config FILE ...] [--steps 50] [--workers 8] [--out FILE.json] [key=value ...]

Prints one row per setting and the ratios that matter (bf16 / fp32, channels_last / NCHW,
pipeline / in-memory for each loader). Needs a CUDA GPU; refuses clearly without one.
"""

import argparse
import sys

from mscvision.cli import guarded

# (label, bf16, channels_last, loader workers: None = --workers); the ratios below read these labels
SETTINGS = (("fp32", False, False, None), ("bf16", True, False, None),
            ("bf16 + channels_last", True, True, None), ("bf16 + channels_last, 0 workers", True, True, 0))


def run(args: argparse.Namespace) -> int:
    import torch

    from mscvision.core.errors import ConfigError

    if not torch.cuda.is_available():
        raise ConfigError("no CUDA GPU is visible to torch: run this on a GPU machine (CPU figures: scripts/benchmark.py)")
    from mscvision.benchmarks.machine import cpu_info, gpu_info, installed_package_versions
    from mscvision.benchmarks.training_speed import training_throughput
    from mscvision.core.fileio import write_json_atomic
    from mscvision.training.config import load_config

    torch.backends.cudnn.benchmark = True
    rows = {}
    for label, bf16, channels_last, workers in SETTINGS:
        n = args.workers if workers is None else workers
        config = load_config(args.config, [*args.overrides, f"data.num_workers={n}"])
        rows[label] = training_throughput(config, steps=args.steps, device="cuda", bf16=bf16, channels_last=channels_last)
        r = rows[label]
        device_path = (f"{r['device_pipeline_img_s']:9.1f} img/s (ratio {r['device_ratio']:.3f})"
                       if r["device_pipeline_img_s"] is not None else "n/a (data.cache_images off)")
        print(f"{label:34s} CPU loader {r['pipeline_img_s']:9.1f} img/s (ratio {r['ratio']:.3f})   device augment "
              f"{device_path}   in-memory {r['in_memory_img_s']:9.1f} img/s   (batch {r['batch_size']}, {n} workers)",
              flush=True)
    ratios = {
        "bf16 / fp32 (in-memory)": rows["bf16"]["in_memory_img_s"] / rows["fp32"]["in_memory_img_s"],
        "channels_last / NCHW (bf16, in-memory)": rows["bf16 + channels_last"]["in_memory_img_s"] / rows["bf16"]["in_memory_img_s"],
        f"{args.workers} workers / 0 workers (pipeline)": rows["bf16 + channels_last"]["pipeline_img_s"]
        / rows["bf16 + channels_last, 0 workers"]["pipeline_img_s"],
    }
    best = rows["bf16 + channels_last"]
    if best["device_pipeline_img_s"] is not None:
        ratios[f"device augment / CPU loader, {args.workers} workers (bf16 + channels_last)"] = (
            best["device_pipeline_img_s"] / best["pipeline_img_s"])
    for name, value in ratios.items():
        print(f"{name:60s} {value:.2f}")
    report = {"settings": rows,
              "ratios": {k: round(v, 3) for k, v in ratios.items()}, "gpu_info": gpu_info(), "cpu": cpu_info(), "versions": installed_package_versions()}
    if args.out:
        write_json_atomic(args.out, report)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", metavar="FILE", help="YAML config(s), layered in order")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--out", metavar="FILE.json")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    sys.exit(guarded(run, parser.parse_args(), "scripts/cuda_check.py"))
