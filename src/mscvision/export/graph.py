"""The deployable graph: backbone → heads → softmax(logits / temperature), plus the learned OOD score
(export/ood.py), as one ONNX file.

With ``tta`` the graph itself runs the 8 dihedral views of each input as one batch and averages
their probabilities (logits and features too), exactly as ``predict_probabilities(tta=True)`` does
in training-time evaluation: the station then runs what the "test_tta" figures measured.

We use torch 2.14's default dynamo exporter (``torch.export`` + onnxscript): it exports this plain
conv/linear net cleanly, takes a dynamic batch dimension from ``dynamic_shapes``, and its
in-memory ``model_proto`` lets us embed the metadata and save every tensor inside one file.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import torch
from torch import nn

from mscvision.core.fileio import atomic_path
from mscvision.core.preprocess import PreprocessSpec
from mscvision.runtime.metadata import (FEATURES_OUTPUT, INPUT_NAME, METADATA_KEY, OOD_OUTPUT, logits_output,
                                        probability_output)
from mscvision.training.evaluate import dihedral_views

OPSET = 18  # the dynamo exporter's floor; ≥ 17 as the contract asks, and stated explicitly
EXPORT_BATCH = 2  # > 1, so nothing in the trace can specialise on a batch of one


class DeployNet(nn.Module):
    """Outputs, in order: probabilities per task (temperature applied), logits per task, features and,
    once an OOD score head is attached (``ood``: features (N, D) → score (N,), export/ood.py), the
    learned OOD score. The head reads the features output itself (the view mean under TTA), so the
    score is a function of what the graph reports as ``features``."""

    def __init__(self, net: nn.Module, tasks: list[str], temperatures: list[float], tta: bool = False,
                 ood: nn.Module | None = None):
        super().__init__()
        self.net = net
        self.tasks = list(tasks)
        self.tta = tta
        self.ood = ood
        # a buffer, not a Python float, so the temperature is part of the graph's weights
        self.register_buffer("inverse_temperature", torch.tensor([1.0 / t for t in temperatures]))

    def output_names(self) -> list[str]:
        return ([probability_output(t) for t in self.tasks] + [logits_output(t) for t in self.tasks]
                + [FEATURES_OUTPUT] + ([OOD_OUTPUT] if self.ood is not None else []))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch = dihedral_views(x) if self.tta else [x]
        views = len(batch)
        features, logits = self.net(torch.cat(batch) if views > 1 else x)
        probabilities = [_view_mean(torch.softmax(logits[t] * self.inverse_temperature[i], dim=1), views)
                         for i, t in enumerate(self.tasks)]
        features = _view_mean(features, views)
        outputs = (*probabilities, *(_view_mean(logits[t], views) for t in self.tasks), features)
        return outputs if self.ood is None else (*outputs, self.ood(features))


def _view_mean(value: torch.Tensor, views: int) -> torch.Tensor:
    """(views * N, K) stacked view by view → (N, K), the mean over views."""
    return value if views == 1 else value.reshape(views, -1, value.shape[1]).mean(dim=0)


def export_proto(model: DeployNet, spec: PreprocessSpec, opset: int = OPSET) -> onnx.ModelProto:
    """Trace ``model`` (eval mode, CPU, float32) into an ONNX model with a dynamic batch axis."""
    model = model.eval().float().cpu()
    example = torch.randn(EXPORT_BATCH, spec.in_channels, *spec.size, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(model, (example,), input_names=[INPUT_NAME], output_names=model.output_names(),
                                opset_version=opset, dynamo=True, external_data=False,
                                dynamic_shapes={"x": {0: batch}}, verbose=False)
    return program.model_proto


def embed_metadata(proto: onnx.ModelProto, metadata: dict) -> None:
    """Put the metadata JSON into ``metadata_props`` (replacing an earlier copy)."""
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(metadata, sort_keys=False))
    proto.producer_name = "mscvision"


def save_single_file(proto: onnx.ModelProto, path: Path) -> None:
    """Write every tensor inside ``path`` (no ``.onnx.data`` side file), atomically, then check it."""
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise RuntimeError(f"initializer {tensor.name} still points to external data")
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
        onnx.checker.check_model(str(tmp), full_check=True)
    side = path.with_name(path.name + ".data")
    if side.exists():
        raise RuntimeError(f"{side} appeared beside the model; an mscvision model must be one file")
