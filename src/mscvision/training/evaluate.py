"""Evaluation on a split: probabilities, metrics.json blocks, confusion-matrix plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mscvision.core.metrics import classification_metrics
from mscvision.core.tasks import Task


@torch.inference_mode()
def predict_probabilities(model: torch.nn.Module, loader, device: torch.device | str = "cpu",
                          tta: bool = False) -> dict[str, np.ndarray]:
    """Softmax probabilities per task over a loader, in loader order.

    ``tta``: the mean over the 8 dihedral views (4 rotations x optional flip); cells have no
    preferred orientation, so each view is an equally valid look at the same image.
    """
    model.eval().to(device)
    out: dict[str, list[np.ndarray]] = {}
    for x, _ in loader:
        x = x.to(device)
        views = dihedral_views(x) if tta else [x]
        summed: dict[str, torch.Tensor] = {}
        for view in views:
            _, logits = model(view)
            for task, value in logits.items():
                summed[task] = summed.get(task, 0) + torch.softmax(value.float(), dim=1)
        for task, value in summed.items():
            out.setdefault(task, []).append((value / len(views)).cpu().numpy())
    return {task: np.concatenate(chunks) for task, chunks in out.items()}


def dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    rotations = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]
    return rotations + [torch.flip(r, dims=(3,)) for r in rotations]


def metrics_for_split(probs: dict[str, np.ndarray], targets: dict[str, np.ndarray], tasks: list[Task]) -> dict:
    return {task.name: classification_metrics(targets[task.name], probs[task.name].argmax(axis=1), task.classes)
            for task in tasks}


def plot_confusion(figures: dict, task: Task, title: str, path: Path) -> None:
    """Row-normalised confusion matrix with counts, as PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mscvision.core.fileio import atomic_path

    cm = np.asarray(figures["confusion_matrix"], dtype=float)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = 1.6 + 0.55 * len(task.classes)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(task.classes)), task.classes, rotation=45, ha="right")
    ax.set_yticks(range(len(task.classes)), task.classes)
    for (i, j), count in np.ndenumerate(cm):
        ax.text(j, i, f"{int(count)}", ha="center", va="center", fontsize=8,
                color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\nbalanced acc {figures['balanced_accuracy']:.3f}, macro F1 {figures['macro_f1']:.3f}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
