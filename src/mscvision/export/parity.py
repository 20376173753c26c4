"""Parity: the exported file, run by onnxruntime, against the torch model that was evaluated.

Figures per precision and task (``parity.json``): n_images, max_abs_diff (of probabilities),
top1_agreement, changed_predictions, balanced_accuracy_delta (candidate minus torch, as a fraction:
0.01 is one point; over the images with a known label). A model with a learned OOD score also gets
``ood[PRECISION]``: the score's max_abs_diff, max_relative_diff, max_diff_over_spread and
rank_correlation against torch fp32, gated with the tasks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mscvision.core.metrics import classification_metrics
from mscvision.core.ood_scores import score_spread
from mscvision.core.tasks import IGNORE_INDEX, Task
from mscvision.runtime.metadata import OOD_OUTPUT

# The gates. fp32 must be the same model; fp16 / int8 must make the same decisions (docs/architecture.md).
FP32_MAX_ABS_DIFF = 1e-4
VARIANT_MIN_TOP1 = 0.99
VARIANT_MAX_BAL_ACC_DROP = 0.01
MIN_PARITY_IMAGES = 256
# The learned OOD score (``ood.score``). fp32: the same arithmetic as torch, up to float32 rounding,
# relative for scores above 1 (a Mahalanobis distance is tens). Variants keep the score in float but
# compute it from their own (quantised) features: they must order the images as fp32 does and stay
# close on the scale a threshold is set on (each variant carries its own calibration scores, so the
# false-alarm guarantee holds for it; these bounds keep its power to tell unusual images apart).
# Measured on the default model (600 test images, AVX512-VNNI): uint8-weight int8, rank correlation
# 0.9991 / 0.9978 and max |Δ| 0.10 / 0.15 of the spread (kNN / Mahalanobis); 7-bit weights 0.9959 / 0.9962.
OOD_FP32_MAX_RELATIVE_DIFF = 1e-4
OOD_VARIANT_MIN_RANK_CORRELATION = 0.99
OOD_VARIANT_MAX_DIFF_OVER_SPREAD = 0.25


@torch.inference_mode()
def torch_outputs(model: torch.nn.Module, tensors: np.ndarray, tasks: list[Task],
                  batch: int = 64) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Probabilities from the deploy wrapper's first outputs and its learned OOD score (its last
    output; None without a score head), in float32 on the CPU."""
    model.eval()
    chunks: dict[str, list[np.ndarray]] = {t.name: [] for t in tasks}
    scores = []
    for start in range(0, len(tensors), batch):
        outputs = model(torch.from_numpy(tensors[start:start + batch]))
        for t, out in zip(tasks, outputs):
            chunks[t.name].append(out.numpy())
        if model.ood is not None:
            scores.append(outputs[-1].numpy())
    return {name: np.concatenate(parts) for name, parts in chunks.items()}, np.concatenate(scores) if scores else None


def onnx_outputs(path: Path, tensors: np.ndarray, threads: int = 0,
                 batch: int = 64) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The same figures through the runtime a station uses (its own model loader and metadata)."""
    from mscvision.runtime.model import load_model

    model = load_model(path, threads=threads, device="cpu")
    chunks: dict[str, list[np.ndarray]] = {}
    scores = []
    for start in range(0, len(tensors), batch):
        probabilities, score = model.predict_with_ood(tensors[start:start + batch])
        for task, probs in probabilities.items():
            chunks.setdefault(task, []).append(probs)
        if score is not None:
            scores.append(score)
    return {task: np.concatenate(parts) for task, parts in chunks.items()}, np.concatenate(scores) if scores else None


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


def ood_figures(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """The learned OOD score of the candidate against torch's, on the same held-out images."""
    diff = np.abs(candidate.astype(np.float64) - reference)
    return {"n_images": int(len(reference)), "max_abs_diff": float(diff.max()),
            "max_relative_diff": float((diff / np.maximum(np.abs(reference), 1.0)).max()),
            "max_diff_over_spread": float(diff.max() / score_spread(reference)),
            "rank_correlation": spearman(reference, candidate)}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (ties broken by order: scores are continuous)."""
    ranks = [np.argsort(np.argsort(x, kind="stable")).astype(np.float64) for x in (a, b)]
    if len(a) < 2:
        return 1.0
    return float(np.corrcoef(*ranks)[0, 1])


def ood_gate_failures(figures: dict, precision: str) -> list[str]:
    """Why the learned OOD score misses the gate for ``precision`` (empty when it passes)."""
    name = f"{OOD_OUTPUT}:"
    if precision == "fp32":
        if not figures["max_relative_diff"] <= OOD_FP32_MAX_RELATIVE_DIFF:
            return [f"{name} max |Δ| / max(1, |score|) {figures['max_relative_diff']:.2e} > "
                    f"{OOD_FP32_MAX_RELATIVE_DIFF:.0e}"]
        return []
    failures = []
    if not figures["rank_correlation"] >= OOD_VARIANT_MIN_RANK_CORRELATION:
        failures.append(f"{name} rank correlation with fp32 {figures['rank_correlation']:.4f} < "
                        f"{OOD_VARIANT_MIN_RANK_CORRELATION}")
    if not figures["max_diff_over_spread"] <= OOD_VARIANT_MAX_DIFF_OVER_SPREAD:
        failures.append(f"{name} max |Δ| is {figures['max_diff_over_spread']:.2f} of the in-distribution spread "
                        f"(> {OOD_VARIANT_MAX_DIFF_OVER_SPREAD})")
    return failures


def gate_entry(precision: str, failures: list[str], extra: dict | None = None, ood: bool = False) -> dict:
    """parity.json's ``gates[PRECISION]``: the criteria, whether they were met, and why not."""
    if precision == "fp32":
        criteria = f"max |Δp| <= {FP32_MAX_ABS_DIFF:g} and 100% top-1 agreement, per task"
        ood_criteria = f"max |Δ| / max(1, |score|) <= {OOD_FP32_MAX_RELATIVE_DIFF:g}"
    else:
        criteria = (f"top-1 agreement >= {VARIANT_MIN_TOP1:.0%} and balanced accuracy lost <= "
                    f"{100 * VARIANT_MAX_BAL_ACC_DROP:g} point, per task")
        ood_criteria = (f"rank correlation with fp32 >= {OOD_VARIANT_MIN_RANK_CORRELATION} and max |Δ| <= "
                        f"{OOD_VARIANT_MAX_DIFF_OVER_SPREAD} of the fp32 scores' 5th-95th percentile range")
    if ood:
        criteria += f"; {OOD_OUTPUT} (against torch fp32, on the same images): {ood_criteria}"
    return {"criteria": criteria, "passed": not failures, "failures": failures, **(extra or {})}


def parity_notes(n_images: int) -> list[str]:
    if n_images >= MIN_PARITY_IMAGES:
        return []
    return [f"only {n_images} held-out images exist (the gate asks for {MIN_PARITY_IMAGES}); "
            "the figures are less certain"]
