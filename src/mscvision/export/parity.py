"""Parity: the exported file, run by onnxruntime, against the torch model that was evaluated.

Figures per precision and task (``parity.json``): n_images, max_abs_diff (of probabilities),
top1_agreement, changed_predictions, balanced_accuracy_delta (candidate minus torch, as a fraction:
0.01 is one point; over the images with a known label).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mscvision.core.metrics import classification_metrics
from mscvision.core.tasks import IGNORE_INDEX, Task

# The gates. fp32 must be the same model; fp16 / int8 must make the same decisions (docs/architecture.md).
FP32_MAX_ABS_DIFF = 1e-4
VARIANT_MIN_TOP1 = 0.99
VARIANT_MAX_BAL_ACC_DROP = 0.01
MIN_PARITY_IMAGES = 256


@torch.inference_mode()
def torch_probabilities(model: torch.nn.Module, tensors: np.ndarray, tasks: list[Task],
                        batch: int = 64) -> dict[str, np.ndarray]:
    """Probabilities from the deploy wrapper's first outputs, in float32 on the CPU."""
    model.eval()
    chunks: dict[str, list[np.ndarray]] = {t.name: [] for t in tasks}
    for start in range(0, len(tensors), batch):
        outputs = model(torch.from_numpy(tensors[start:start + batch]))
        for t, out in zip(tasks, outputs):
            chunks[t.name].append(out.numpy())
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def onnx_probabilities(path: Path, tensors: np.ndarray, threads: int = 0, batch: int = 64) -> dict[str, np.ndarray]:
    """The same figures through the runtime a station uses (its own model loader and metadata)."""
    from mscvision.runtime.model import load_model

    model = load_model(path, threads=threads, device="cpu")
    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(tensors), batch):
        for task, probs in model.predict(tensors[start:start + batch]).items():
            chunks.setdefault(task, []).append(probs)
    return {task: np.concatenate(parts) for task, parts in chunks.items()}


def parity_figures(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                   targets: dict[str, np.ndarray], tasks: list[Task]) -> dict:
    figures = {}
    for task in tasks:
        ref, cand = reference[task.name], candidate[task.name]
        ref_top, cand_top = ref.argmax(axis=1), cand.argmax(axis=1)
        y = targets[task.name]
        known = y != IGNORE_INDEX
        bal = [classification_metrics(y[known], top[known], task.classes)["balanced_accuracy"]
               for top in (ref_top, cand_top)] if known.any() else [0.0, 0.0]
        figures[task.name] = {
            "n_images": int(len(ref)),
            "max_abs_diff": float(np.abs(ref - cand).max()),
            "top1_agreement": float((ref_top == cand_top).mean()),
            "changed_predictions": int((ref_top != cand_top).sum()),
            "balanced_accuracy_delta": float(bal[1] - bal[0]),
            "n_labelled": int(known.sum()),
        }
    return figures


def gate_failures(figures: dict, precision: str) -> list[str]:
    """Why ``figures`` miss the gate for ``precision`` (empty when they pass)."""
    failures = []
    for task, f in figures.items():
        if precision == "fp32":
            if f["max_abs_diff"] > FP32_MAX_ABS_DIFF:
                failures.append(f"{task}: max |Δp| {f['max_abs_diff']:.2e} > {FP32_MAX_ABS_DIFF:.0e}")
            if f["top1_agreement"] < 1.0:
                failures.append(f"{task}: {f['changed_predictions']} of {f['n_images']} top-1 predictions changed")
            continue
        if f["top1_agreement"] < VARIANT_MIN_TOP1:
            failures.append(f"{task}: top-1 agreement {f['top1_agreement']:.2%} < {VARIANT_MIN_TOP1:.0%} "
                            f"({f['changed_predictions']} of {f['n_images']} predictions changed)")
        if f["balanced_accuracy_delta"] < -VARIANT_MAX_BAL_ACC_DROP:
            failures.append(f"{task}: balanced accuracy {100 * f['balanced_accuracy_delta']:+.2f} points "
                            f"(more than {100 * VARIANT_MAX_BAL_ACC_DROP:.0f} point lost)")
    return failures


def gate_entry(precision: str, failures: list[str], extra: dict | None = None) -> dict:
    """parity.json's ``gates[PRECISION]``: the criteria, whether they were met, and why not."""
    if precision == "fp32":
        criteria = f"max |Δp| <= {FP32_MAX_ABS_DIFF:g} and 100% top-1 agreement, per task"
    else:
        criteria = (f"top-1 agreement >= {VARIANT_MIN_TOP1:.0%} and balanced accuracy lost <= "
                    f"{100 * VARIANT_MAX_BAL_ACC_DROP:g} point, per task")
    return {"criteria": criteria, "passed": not failures, "failures": failures, **(extra or {})}


def parity_notes(n_images: int) -> list[str]:
    if n_images >= MIN_PARITY_IMAGES:
        return []
    return [f"only {n_images} held-out images exist (the gate asks for {MIN_PARITY_IMAGES}); "
            "the figures are less certain"]
