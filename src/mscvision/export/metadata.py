"""The metadata document embedded in every exported model (read back by ``runtime.metadata``)."""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
from pathlib import Path

from mscvision import __version__
from mscvision.core.fileio import sha256_file
from mscvision.core.machine import cpu_flags, cpu_model
from mscvision.core.ood_scores import score_spread
from mscvision.core.preprocess import PreprocessSpec
from mscvision.core.tasks import Task
from mscvision.runtime.metadata import (FEATURES_OUTPUT, FORMAT, FORMAT_VERSION, INPUT_NAME, OOD_OUTPUT, logits_output,
                                        probability_output)
from mscvision.runtime.verify import PROBABILITY_TOLERANCE, TENSOR_TOLERANCE

TOO_LARGE_FACTOR = 2  # inputs with a side over twice the largest training image are refused
_METRIC_KEYS = ("balanced_accuracy", "macro_f1", "weighted_f1", "accuracy", "n")
# What `verify` holds a station to, per precision (max |Δp| against the vectors' expected values).
# int8's expected values are the QDQ graph's exact arithmetic (onnxruntime with graph optimisations
# off). Fused kernels differ from it only by requantisation rounding: measured on the default model
# (600 held-out images, AVX512-VNNI, ORT 1.32) max |Δp| 6.0e-3 with 7-bit weights and 3.3e-3 on its
# 32 clear-margin vectors. A kernel that saturates changes sums by up to half (test_export's QDQ
# Conv) and flips ~10% of top-1 calls (issue 13), far above this bound.
INT8_PROBABILITY_MAX_ABS = 1e-2
CONFORMANCE_PROBABILITY_MAX_ABS = {**PROBABILITY_TOLERANCE, "int8": INT8_PROBABILITY_MAX_ABS}
TTA_NOTE = "dihedral x8 inside the graph: the mean over 4 rotations x optional flip of each input"
# What `verify` allows the learned OOD score to differ from the vectors' expected value, as a fraction
# of the spread of the model's calibration scores (core.ood_scores.score_spread: kNN scores spread
# over hundredths, Mahalanobis distances over units). fp32 / fp16: kernel rounding, with the
# probabilities' ratio between them; int8: fused kernels' requantisation rounding moves the features
# and the score with them: measured on the default model (600 test images, AVX512-VNNI, ORT 1.32)
# fused vs unfused max |Δ| 0.014 of the spread for kNN and 0.028 for Mahalanobis.
OOD_CONFORMANCE_OVER_SPREAD = {"fp32": 1e-3, "fp16": 2e-2, "int8": 0.1}


def build_metadata(*, name: str, tasks: list[Task], settings: dict[str, dict], spec: PreprocessSpec,
                   max_side: int, bit_depths: tuple[int, ...], provenance: dict, card: dict,
                   tta: bool = False, training_side: int | None = None) -> dict:
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": name, "precision": "fp32",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "tasks": [{"name": t.name, "classes": list(t.classes), **settings[t.name]} for t in tasks],
        "temperature_applied_in_graph": True,
        "test_time_augmentation": TTA_NOTE if tta else None,  # already in the graph: never apply it again
        "input": {"name": INPUT_NAME, "dtype": "float32", "layout": "NCHW", "batch": "dynamic",
                  "channels": spec.in_channels, "height": spec.size[0], "width": spec.size[1],
                  "max_image_side": max(TOO_LARGE_FACTOR * max_side, *spec.size),
                  "training_bit_depths": list(bit_depths),
                  # the median side of the held-out images (decoded, before preprocessing): a QC station cuts
                  # whole fields into tiles of this side at the trained pixel size (runtime/tiles.py)
                  "training_image_side": training_side},
        "outputs": {"probabilities": {t.name: probability_output(t.name) for t in tasks},
                    "logits": {t.name: logits_output(t.name) for t in tasks}, "features": FEATURES_OUTPUT,
                    "notes": "probabilities = softmax(logits / temperature); logits and features are reserved; "
                             f"ood_score (when present): {OOD_OUTPUT}, float32 (N,), the learned OOD score of the "
                             "features, higher = more unusual (see 'ood')"},
        "preprocess": spec.to_dict(),
        "decision": ("per task: the top class when its probability >= threshold, else 'review'; a task whose "
                     "abstention certificate is not certified sends every image to review"),
        "provenance": provenance,
        "versions": export_toolchain_versions(),
        "model_card": card,
    }


def conformance(precision: str, n_candidates: int) -> dict:
    """The model's own verify rule (vectors.json keeps a copy for reading, not for checking): the
    tolerances, and ``min_cases``, the distinct vectors export writes from ``n_candidates`` held-out
    images, so that a thinned vectors folder (one case, or copies of one) cannot PASS."""
    from mscvision.export.vectors import vector_count  # imports the runtime's model loader

    return {"tensor_max_abs": TENSOR_TOLERANCE, "probability_max_abs": CONFORMANCE_PROBABILITY_MAX_ABS[precision],
            "min_cases": vector_count(precision, n_candidates), "top1": "must match", "labels": "must match"}


def ood_tolerance(precision: str, calibration_scores) -> float:
    """``conformance.ood_max_abs``: the precision's bound times the spread of this file's scores."""
    return OOD_CONFORMANCE_OVER_SPREAD[precision] * score_spread(calibration_scores)


def gate_measured_on() -> dict:
    """The machine whose kernels the parity gate measured: an int8 figure holds for this ISA."""
    import onnxruntime

    return {"cpu_flags": cpu_flags(), "machine": platform.machine(),
            "processor": cpu_model()[0] or platform.processor() or None, "onnxruntime": onnxruntime.__version__}


def provenance(config, run_dir: Path | None, checkpoint: Path, metrics: dict, manifest: dict | None) -> dict:
    """Where the model came from. ``manifest``: the run's record of its data manifest (metrics.json
    run.data_manifest); the model carries its relative name and SHA-256, never a local path."""
    key = config.deployed_test_key
    test = metrics.get(key, {})
    return {
        "config_hash": config.hash(), "run_dir": str(run_dir) if run_dir else None,
        "checkpoint": checkpoint.name, "checkpoint_sha256": sha256_file(checkpoint),
        "data_manifest": data_set_name(config, manifest),
        "data_manifest_sha256": manifest["sha256"] if manifest else None,
        "split_sha256": sha256_file(run_dir / "split.csv") if run_dir else None,
        "git_commit": git_commit(),
        "test_metrics": {task: {k: m[k] for k in _METRIC_KEYS if k in m} for task, m in test.items()},
        "metrics_setup": metrics.get("setup"),
        "test_metrics_setup": metrics.get("setup", {}).get(key),
        # the run's calibration figures (before / after the temperature, val and test) and abstention
        "calibration": metrics.get("calibration"),
        "abstention": metrics.get("abstention"),
    }


def data_set_name(config, manifest: dict | None) -> str | None:
    """A name for the training data that is true on any machine: ``FOLDER/manifest.csv`` (the run's
    record), else the data folder's name (a class-per-folder tree); None for the synthetic set."""
    if manifest:
        return manifest.get("name") or Path(manifest["path"]).parent.name + "/" + Path(manifest["path"]).name
    return Path(config.data.path).name if config.data.path else None


def model_card(config, tasks: list[Task], metrics: dict, n_split: dict[str, int],
               manifest: dict | None = None) -> dict:
    synthetic = not config.data.path
    hashed = f", manifest SHA-256 {manifest['sha256']}" if manifest else ""
    data = (f"the embedded synthetic MSC-culture generator (n={config.data.synthetic.n}, "
            f"modality {config.data.synthetic.modality}, {config.data.synthetic.bit_depth}-bit)"
            if synthetic else f"the data set {data_set_name(config, manifest)!r}{hashed}")
    figures = "; ".join(f"{task}: balanced accuracy {m['balanced_accuracy']:.3f}, macro F1 {m['macro_f1']:.3f} "
                        f"(n={m['n']})" for task, m in metrics.get(config.deployed_test_key, {}).items())
    subject = ("of cultured mesenchymal stromal cells (trained on synthetic images only)" if synthetic
               else "like those of its training data set")
    limits = ["not validated on real MSC images" if synthetic else
              "validated only on the held-out groups of its own data set",
              "single fields about the size of the training images; larger images are refused (no tiling yet)",
              _calibration_limit(metrics)]
    return {
        "intended_use": (f"Research use: classify single-field microscopy images {subject} for "
                         f"{', '.join(t.name for t in tasks)}; a QC aid whose outputs a person reviews, "
                         "not a release decision on its own."),
        "training_data": f"{data}; images per split: " + ", ".join(f"{k} {v}" for k, v in n_split.items()) +
                         "; split by group (no group straddles train/val/test).",
        "figures": f"test split, held-out groups, {'dihedral x8 TTA (as this graph runs)' if config.export.tta else 'plain single pass'}: "
                   f"{figures or 'none recorded'}.",
        "known_limits": "; ".join(limits) + ".",
    }


def _calibration_limit(metrics: dict) -> str:
    """What the model card says of its probabilities and its review threshold."""
    calibration, abstention = metrics.get("calibration"), metrics.get("abstention", {})
    if not calibration:
        return "probabilities are not calibrated (temperature 1.0) and no review threshold is certified"
    parts = []
    for task, block in calibration.items():
        certificate = abstention.get(task, {}).get("certificate", {})
        guarantee = (f"labels given when p >= {certificate['threshold']:.4f}, certified accuracy >= "
                     f"{certificate['target_accuracy']} at delta {certificate['delta']}" if certificate.get("certified")
                     else "no threshold certified: every image goes to review")
        parts.append(f"{task}: temperature {block['temperature']:.3f} fitted on {block['fitted_on']}; {guarantee}")
    return "calibration and guarantees hold for images like the calibration groups: " + "; ".join(parts)


def export_toolchain_versions() -> dict:
    """The versions the model was exported with (mscvision, python, torch, onnx, onnxruntime, numpy)."""
    import numpy
    import onnx
    import onnxruntime
    import torch

    return {"mscvision": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__}


def git_commit() -> str | None:
    """The commit of the source tree this mscvision runs from, with '+dirty' for local changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "") if commit else None
