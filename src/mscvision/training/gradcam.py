"""Grad-CAM (Selvaraju et al. 2017) on a trained checkpoint: where the model looks, for the report.

Our own ~40 lines rather than the `grad-cam` package: that package pulls opencv, ttach,
scikit-learn and tqdm into the install for what is a forward hook, one backward pass and a
weighted sum. The map is taken at the backbone's last conv block: the input of its global
average pool, which every backbone here ends with (tiny, ResNet, EfficientNet, MobileNet,
ConvNeXt), so one rule finds the layer for all of them.

The images are the station's tensors (``runtime.inputs.prepare_input``), so the overlays explain
the very inputs the exported model was evaluated on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mscvision.runtime.inputs import prepare_input
from mscvision.runtime.metadata import ModelMetadata
from mscvision.runtime.report import heat_overlay, model_view, png_data_uri
from mscvision.training.run_files import load_classifier


def last_conv_block(backbone: nn.Module) -> tuple[str, nn.Module]:
    """(name, module) of the backbone's global average pool: its input is the last conv block's output."""
    pools = [(name, m) for name, m in backbone.named_modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    if not pools:
        raise ValueError(f"{type(backbone).__name__} has no global average pool to take Grad-CAM at")
    return pools[-1]


def grad_cam(net: nn.Module, x: torch.Tensor, task: str, class_index: int) -> np.ndarray:
    """Grad-CAM of ``class_index`` of ``task`` for one image ``x`` (1, C, h, w) → (h, w) in [0, 1].

    ``net`` returns (features, {task: logits}) (``MultiTaskNet``). The gradient of the class logit
    with respect to the last conv block's activations, averaged over space, weighs those activations'
    channels; the positive part of the weighted sum, upsampled to the input, is the map.
    """
    _, pool = last_conv_block(net.backbone)
    seen: dict[str, torch.Tensor] = {}

    def keep(module, inputs):
        inputs[0].retain_grad()  # the gradient with respect to an activation is dropped unless kept
        seen["activations"] = inputs[0]

    handle = pool.register_forward_pre_hook(keep)
    try:
        with torch.enable_grad():
            # the input requires grad so that the activations do even when the weights are frozen (EMA)
            _, logits = net(x.detach().clone().requires_grad_(True))
            logits[task][0, class_index].backward()
    finally:
        handle.remove()
    activations = seen["activations"]
    weights = activations.grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)[0, 0].detach().numpy()
    top = float(cam.max())
    return cam / top if top > 0 else cam


def overlay_samples(checkpoint: Path, metadata: ModelMetadata, rows: list[dict], tasks: list[str],
                    per_class: int = 3, seed: int = 0) -> tuple[dict[str, list[dict]], str]:
    """Grad-CAM overlays of the predicted class for up to ``per_class`` correct and ``per_class`` wrong
    images of each true class, drawn at random (``seed``) from evaluation rows (predictions.csv rows:
    ``TASK.true`` and ``TASK.p.CLASS``). Returns ({task: [sample]}, the layer used)."""
    net = load_classifier(checkpoint).eval_net.eval()
    layer, _ = last_conv_block(net.backbone)
    rng = np.random.default_rng(seed)
    classes = {t.name: t.classes for t in metadata.tasks}
    out: dict[str, list[dict]] = {}
    for task in tasks:
        out[task] = []
        for row, predicted, correct in _sample(rows, task, classes[task], per_class, rng):
            tensor = prepare_input(row["path"], metadata).tensor
            heat = grad_cam(net, torch.from_numpy(tensor)[None], task, predicted)
            probs = [float(row[f"{task}.p.{c}"]) for c in classes[task]]
            out[task].append({"uri": png_data_uri(heat_overlay(model_view(tensor, metadata.spec), heat)),
                              "path": row["path"], "true": row[f"{task}.true"],
                              "predicted": classes[task][predicted], "confidence": max(probs), "correct": correct})
    return out, f"backbone.{layer}'s input (the last conv block's output)"


def _sample(rows: list[dict], task: str, classes: tuple[str, ...], per_class: int, rng: np.random.Generator):
    """(row, predicted index, correct) for the sample of each true class, correct ones first."""
    scored = [r for r in rows if r["status"] != "error" and r.get(f"{task}.true") in classes]
    for cls in classes:
        for correct in (True, False):
            pool = []
            for r in scored:
                predicted = int(np.argmax([float(r[f"{task}.p.{c}"]) for c in classes]))
                if r[f"{task}.true"] == cls and (classes[predicted] == cls) == correct:
                    pool.append((r, predicted, correct))
            for i in sorted(rng.permutation(len(pool))[:per_class]):
                yield pool[i]
