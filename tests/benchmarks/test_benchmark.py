"""The benchmark's arithmetic and report (its timings are figures, never test assertions)."""

import subprocess
import sys

import pytest

from mscvision.benchmarks.machine import gemm_gflops, theoretical_fp32_peak
from mscvision.benchmarks.run import headline, markdown

from conftest import REPO


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _engine(p50, img_s, gflops):
    return {"b1": {"p50_ms": p50, "p99_ms": p50 * 1.5}, "b32_img_s": img_s, "gflops_b32": gflops, "threads": 2}


def _report():
    model = {"input_shape": [1, 64, 64], "gflops_per_image": 1.1,
             "cpu_inference": {"torch_eager": _engine(10.0, 100, 110.0), "ort_fp32": _engine(4.0, 120, 132.0),
                               "ort_int8": _engine(2.0, 360, 396.0)},
             "end_to_end": {"n_images": 1024, "predict_img_s": 300, "session_img_s": 360, "ratio": 0.833,
                            "model": "model.int8.onnx", "threads": 2, "decode_workers": 1, "batch_size": 32,
                            "gate_cost": {"n_images": 400, "rounds": 3, "gated_img_s": 98.0, "no_gate_img_s": 100.0,
                                          "ratio": 0.98}},
             "training": {"pipeline_img_s": 95, "in_memory_img_s": 100, "ratio": 0.95, "device": "cpu",
                          "device_pipeline_img_s": 99, "device_ratio": 0.99,
                          "batch_size": 64, "augment": True, "workers": 2},
             "parity": {"split": "test", "n_images": 600,
                        "int8": {"t": {"max_abs_diff": 0.03, "top1_agreement": 0.995, "changed_predictions": 3,
                                       "balanced_accuracy_delta": -0.002}}}}
    return {"machine": {"cpu": {"model": "X", "cores": 2, "flags": ["avx2"]}, "threads": 2,
                        "versions": {"torch": "t", "onnxruntime": "o"}},
            "machine_limit": {"gemm": {"n": 2048, "best": 150.0, "torch": 150.0, "numpy": 100.0, "onnxruntime": 140.0},
                              "theoretical": {"gflops": 166.0, "assumption": "a"}},
            "models": {"m": model}}


def test_headline_ratios_use_the_right_figures():
    h = headline(_report())
    assert h["ort_fp32_vs_torch_b1_latency"] == 0.4
    assert h["int8_vs_fp32_b32_throughput"] == 3.0
    assert h["predict_vs_session_throughput"] == 0.833
    assert h["predict_with_vs_without_ood_gate"] == 0.98
    assert h["train_pipeline_vs_in_memory"] == 0.95
    assert h["train_device_augment_vs_in_memory"] == 0.99  # the same run's device-path loader
    assert h["best_model_gflops_vs_gemm_peak"] == 0.88  # fp32 engines only: 132 / 150
    assert set(h["per_model"]["m"]) == {k for k in h if k != "per_model"}


def test_markdown_table_names_every_engine():
    report = _report()
    report["headline"] = headline(report)
    text = markdown(report)
    for engine in ("torch_eager", "ort_fp32", "ort_int8"):
        assert f"| {engine} |" in text
    assert "150.0 GFLOP/s" in text
    assert "OOD gate: predict 98.0 img/s with it vs 100.0 without → **0.98**" in text
    assert "in-memory 100 img/s → **0.95**; augmenting on the cpu instead (data.augment_on=device): 99 img/s → **0.99**" \
        in text
    assert "int8 t max|Δp| 3.0e-02, top-1 99.50% (3 changed)" in text


def test_theoretical_peak_from_the_vector_isa():
    assert theoretical_fp32_peak({"model": "AMD EPYC", "cores": 2, "mhz": 2500.0, "flags": ["avx512f", "fma"]})["gflops"] == 160.0
    assert theoretical_fp32_peak({"model": "Intel Xeon", "cores": 2, "mhz": 2500.0, "flags": ["avx512f"]})["gflops"] == 320.0
    assert theoretical_fp32_peak({"model": "?", "cores": 2, "mhz": None, "flags": []})["gflops"] is None


def test_gemm_measures_every_engine():
    figures = gemm_gflops(64, threads=1, repeats=1)
    assert {"torch", "numpy", "onnxruntime"} <= set(figures)
    assert figures["best"] == max(figures["torch"], figures["numpy"], figures["onnxruntime"]) > 0


@pytest.mark.skipif(torch_cuda_available(), reason="this machine has a CUDA GPU: the refusal path does not apply")
def test_cuda_check_refuses_clearly_without_a_gpu():
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "cuda_check.py")], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: no CUDA GPU is visible to torch: run this on a GPU machine (CPU figures: scripts/benchmark.py)")


def test_source_images_read_split_csv_as_csv_and_skip_excluded_rows(tmp_path):
    import csv

    import numpy as np

    from mscvision.benchmarks.run import source_images
    from mscvision.core.imageio import write_image

    names = ["bad.png", "a, b.png", "c.png"]  # a comma inside a path: quoted by csv.writer
    for name in names:
        write_image(tmp_path / name, np.zeros((4, 4), np.uint8))
    with open(tmp_path / "split.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "group", "split", "t"])
        for name, split in zip(names, ["excluded", "train", "test"]):
            writer.writerow([str(tmp_path / name), "g", split, "x"])
    assert source_images(tmp_path) == [tmp_path / "a, b.png", tmp_path / "c.png"]


def test_end_to_end_session_inputs_use_predicts_pixel_size(tmp_path):
    import dataclasses

    import numpy as np

    from mscvision.benchmarks.end_to_end import session_inputs, write_image_folder
    from mscvision.core.imageio import decode_image, write_image
    from mscvision.core.preprocess import preprocess
    from mscvision.runtime.inputs import load_input
    from mscvision.runtime.model import load_model

    model = load_model(REPO / "models" / "fixtures" / "shapes-tiny.onnx", threads=1, device="cpu")
    spec = dataclasses.replace(model.metadata.spec, pixel_size_um=0.5, fit="crop_or_pad")
    metadata = dataclasses.replace(model.metadata, spec=spec)
    source = tmp_path / "src.tif"
    image = (np.random.default_rng(0).random((20, 20)) * 255).astype(np.uint8)
    write_image(source, image, pixel_size_um=1.0)  # twice the trained pixel size: predict upsamples x2
    copies = write_image_folder(tmp_path / "copies", [source], 2)
    assert decode_image(copies[0]).pixel_size_um == 1.0  # the copies keep what predict rescales by
    batch = session_inputs(metadata, copies)
    assert np.array_equal(batch[0], load_input(copies[0], metadata))
    assert not np.allclose(batch[0], preprocess(image, spec))  # the pixel size changes the input
