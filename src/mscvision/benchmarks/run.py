"""The benchmark: machine limit, CPU inference, end to end, training — figures and the ratios between.

Every ratio compares two figures measured in the same run on the same machine (absolute times
drift on shared machines). ``headline`` holds the ratios by stable names.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from mscvision.benchmarks import end_to_end, inference, machine
from mscvision.benchmarks.training_speed import training_throughput
from mscvision.core.fileio import write_json_atomic, write_text_atomic
from mscvision.training.run_files import load_classifier, locate_run

SCHEMA = "mscvision.benchmark/1"


def benchmark_model(run_dir: Path, threads: int, quick: bool, work: Path, log=print) -> dict:
    """Figures for one trained run: export (fp32/fp16/int8), torch vs onnxruntime, predict, training."""
    from mscvision.export.pipeline import export_run
    module = load_classifier(locate_run(run_dir).checkpoint)
    net = module.eval_net.eval()
    spec = module.config.preprocess
    shape = (spec.in_channels, *spec.size)
    models, parity = {}, {}
    for precision in ("int8", "fp16"):
        out = export_run(run_dir, work / precision / "model.onnx", precision, threads=threads,
                         parity_images=1024, log=lambda *_: None)
        models.setdefault("fp32", out)
        report = json.loads(out.with_name("model.parity.json").read_text())
        parity.update({p: report[p] for p in ("fp32", precision) if p in report})
        parity["split"], parity["n_images"] = report["split"], report["n_images"]
        variant = out.with_name(f"model.{precision}.onnx")
        if variant.is_file():
            models[precision] = variant
    flops = inference.model_flops(net, shape)
    log(f"  {run_dir.name}: {flops / 1e9:.2f} GFLOP/image; timing torch eager and onnxruntime")
    cpu = {"torch_eager": inference.torch_eager(net, shape, threads, quick)}
    for precision, path in models.items():
        cpu[f"ort_{precision}"] = inference.onnxruntime_session(path, shape, threads, quick)
    for figures in cpu.values():
        figures["gflops_b32"] = round(figures["b32_img_s"] * flops / 1e9, 1)
    sources = source_images(run_dir)
    n_files = 256 if quick else 1024
    paths = end_to_end.write_image_folder(work / "images", sources, n_files)
    e2e_model = models.get("int8", models["fp32"])
    log(f"  predict vs bare session on {n_files} files ({e2e_model.name})")
    e2e = end_to_end.predict_vs_session(e2e_model, paths, threads)
    e2e["model"] = e2e_model.name
    log(f"  predict with the OOD gate vs without it ({models['fp32'].name})")
    e2e["gate_cost"] = end_to_end.gate_cost(models["fp32"], paths[:128 if quick else 400], threads, work)
    log("  training pipeline vs in-memory")
    train = training_throughput(module.config, steps=5 if quick else 20)
    return {"run": str(run_dir), "input_shape": list(shape), "gflops_per_image": round(flops / 1e9, 3),
            "cpu_inference": cpu, "end_to_end": e2e, "training": train,
            "parity": parity, "variants_within_gate": sorted(models)}


def source_images(run_dir: Path, n: int = 64) -> list[Path]:
    """The first ``n`` usable images of the run's split.csv (read as CSV, as export reads it: paths
    may hold commas); rows training skipped as unreadable (``excluded``) are left out."""
    from mscvision.export.samples import read_split

    return [Path(row["path"]) for row in read_split(run_dir) if row["split"] != "excluded"][:n]


def run_benchmark(run_dirs: list[Path], threads: int, quick: bool, out: Path | None, log=print,
                  qc_fields: Path | None = None) -> dict:
    cpu = machine.cpu_info()
    report = {"schema": SCHEMA, "quick": quick,
              "machine": {"cpu": cpu, "gpu": machine.gpu_info(), "versions": machine.installed_package_versions(),
                          "threads": threads, "torch_threads_default": torch.get_num_threads()}}
    log("GEMM limit (fp32)")
    report["machine_limit"] = {"gemm": machine.gemm_gflops(1024 if quick else 2048, threads),
                               "theoretical": machine.theoretical_fp32_peak(cpu)}
    report["models"] = {}
    with tempfile.TemporaryDirectory(prefix="mscvision-bench-") as tmp:
        for run_dir in run_dirs:
            log(f"model {run_dir}")
            report["models"][run_dir.name] = benchmark_model(run_dir, threads, quick, Path(tmp) / run_dir.name, log)
    if qc_fields is not None:
        from mscvision.benchmarks.qc import qc_benchmark

        log(f"qc on the whole fields in {qc_fields}")
        fields = {f"{n // 1000}k": qc_fields / f"field_{n}.tif" for n in (5000, 10000)}
        report["qc"] = qc_benchmark(run_dirs[0] / "model.onnx", fields, threads)
    report["headline"] = headline(report)
    if out:
        write_json_atomic(out, report)
        write_text_atomic(out.with_suffix(".md"), markdown(report))
    return report


def headline(report: dict) -> dict:
    """The ratios by name, per model (the first model's also at top level)."""
    peak = report["machine_limit"]["gemm"]["best"]
    per_model = {}
    for name, m in report["models"].items():
        cpu = m["cpu_inference"]
        # fp32 engines only: int8 / fp16 operations are not the fp32 FLOPs the GEMM limit counts
        best_gflops = max(cpu[e]["gflops_b32"] for e in ("torch_eager", "ort_fp32"))
        per_model[name] = {
            "ort_fp32_vs_torch_b1_latency": round(cpu["ort_fp32"]["b1"]["p50_ms"] / cpu["torch_eager"]["b1"]["p50_ms"], 3),
            "int8_vs_fp32_b32_throughput": (round(cpu["ort_int8"]["b32_img_s"] / cpu["ort_fp32"]["b32_img_s"], 3)
                                            if "ort_int8" in cpu else None),
            "predict_vs_session_throughput": m["end_to_end"]["ratio"],
            "predict_with_vs_without_ood_gate": m["end_to_end"].get("gate_cost", {}).get("ratio"),
            "train_pipeline_vs_in_memory": m["training"]["ratio"],
            "train_device_augment_vs_in_memory": m["training"].get("device_ratio"),
            "best_model_gflops_vs_gemm_peak": round(best_gflops / peak, 3),
        }
    first = next(iter(per_model.values()), {})
    qc = report.get("qc")
    if qc:  # side by side in this run: qc's tile scan vs the bare session on the same tiles pre-cut
        first = {**first, "qc_vs_session_tiles": qc["throughput"]["ratio"],
                 "qc_peak_rss_mib_10k": qc["peak_rss"]["10k"]["peak_rss_mib"],
                 "qc_peak_rss_10k_vs_5k": qc["peak_rss_growth"]}
    return {**first, "per_model": per_model}


def markdown(report: dict) -> str:
    cpu = report["machine"]["cpu"]
    lim = report["machine_limit"]
    lines = [f"Machine: {cpu['model']}, {cpu['cores']} cores, flags {' '.join(cpu['flags'])}; "
             f"threads {report['machine']['threads']}; torch {report['machine']['versions']['torch']}, "
             f"onnxruntime {report['machine']['versions']['onnxruntime']}",
             "", f"fp32 GEMM limit (best of torch/numpy/onnxruntime, n={lim['gemm']['n']}): "
             f"**{lim['gemm']['best']} GFLOP/s** (torch {lim['gemm']['torch']}, numpy {lim['gemm']['numpy']}, "
             f"onnxruntime {lim['gemm'].get('onnxruntime')}); theoretical {lim['theoretical']['gflops']} "
             f"({lim['theoretical']['assumption']})", ""]
    for name, m in report["models"].items():
        lines += [f"### {name} — input {m['input_shape']}, {m['gflops_per_image']} GFLOP/image", "",
                  "| engine | b1 p50 ms | b1 p99 ms | b32 img/s | model GFLOP/s at b32 (int8/fp16: effective) |", "|---|---|---|---|---|"]
        for engine, f in m["cpu_inference"].items():
            lines.append(f"| {engine} | {f['b1']['p50_ms']} | {f['b1']['p99_ms']} | {f['b32_img_s']} | {f['gflops_b32']} |")
        e, t = m["end_to_end"], m["training"]
        lines += ["", f"End to end ({e['n_images']} PNG files, {e['model']}): `mscvision predict` "
                  f"{e['predict_img_s']} img/s vs bare session {e['session_img_s']} img/s → **{e['ratio']}**", "",
                  f"OOD gate: predict {e.get('gate_cost', {}).get('gated_img_s')} img/s with it vs "
                  f"{e.get('gate_cost', {}).get('no_gate_img_s')} without → **{e.get('gate_cost', {}).get('ratio')}**", "",
                  f"Training ({t['device']}, batch {t['batch_size']}, augmentation {'on' if t['augment'] else 'off'}, "
                  f"{t['workers']} loader workers): pipeline {t['pipeline_img_s']} img/s vs in-memory "
                  f"{t['in_memory_img_s']} img/s → **{t['ratio']}**; augmenting on the {t['device']} instead "
                  f"(data.augment_on=device): {t.get('device_pipeline_img_s')} img/s → **{t.get('device_ratio')}**", ""]
        par = m["parity"]
        lines += [f"Parity vs torch on {par['n_images']} held-out images ({par['split']}): "
                  + "; ".join(f"{p} {t} max|Δp| {f['max_abs_diff']:.1e}, top-1 {100 * f['top1_agreement']:.2f}% "
                              f"({f['changed_predictions']} changed), Δ bal.acc {100 * f['balanced_accuracy_delta']:+.2f} pt"
                              for p in ("fp32", "fp16", "int8") if p in par for t, f in par[p].items()), ""]
        lines += ["| headline ratio | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in report["headline"]["per_model"][name].items()]
        lines.append("")
    return "\n".join(lines) + "\n"
