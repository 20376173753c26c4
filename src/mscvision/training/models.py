"""Backbones (torchvision, any input channel count, a stem sized for the crops) and per-task heads."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from mscvision.core.errors import ConfigError

BACKBONES = ("resnet18", "resnet34", "resnet50", "tiny")


class TinyBackbone(nn.Module):
    """Four conv blocks: a test-only model that trains in seconds (like timm's test variants)."""

    def __init__(self, in_channels: int, width: int = 16):
        super().__init__()
        layers, channels = [], in_channels
        for i in range(4):
            out = width * 2 ** i
            layers += [nn.Conv2d(channels, out, 3, stride=2 if i else 1, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def create_backbone(name: str, in_channels: int, stem_stride: int = 4, pretrained: str | None = None) -> nn.Module:
    """A feature extractor returning (N, num_features); ``num_features`` is set on the module."""
    if name == "tiny":
        return TinyBackbone(in_channels)
    if name not in ("resnet18", "resnet34", "resnet50"):
        raise ConfigError(f"model.backbone={name!r}: use one of {BACKBONES}")
    net = getattr(torchvision.models, name)(weights=None)
    if pretrained:
        _load_local_weights(net, pretrained)
    net.conv1 = _adapt_stem(net.conv1, in_channels, stem_stride)
    if stem_stride < 4:
        net.maxpool = nn.Identity()  # small crops: keep spatial detail the ImageNet stem would drop
    net.num_features = net.fc.in_features
    net.fc = nn.Identity()
    return net


def _adapt_stem(conv: nn.Conv2d, in_channels: int, stem_stride: int) -> nn.Conv2d:
    """First conv for ``in_channels`` inputs; pretrained RGB filters are averaged and tiled.

    Summed RGB weights are spread over the new channels (scaled by 3 / in_channels) so a
    pretrained stem keeps its activation scale on greyscale or N-channel microscopy.
    """
    if stem_stride not in (1, 2, 4):
        raise ConfigError(f"model.stem_stride={stem_stride}: use 1, 2 or 4")
    kernel, stride, padding = (7, 2, 3) if stem_stride == 4 else (3, stem_stride, 1)
    new = nn.Conv2d(in_channels, conv.out_channels, kernel, stride, padding, bias=False)
    if kernel == conv.kernel_size[0]:
        with torch.no_grad():
            mean = conv.weight.mean(dim=1, keepdim=True)
            new.weight.copy_(mean.repeat(1, in_channels, 1, 1) * (3.0 / in_channels))
    return new


def _load_local_weights(net: nn.Module, path: str) -> None:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"model.pretrained={path!r}: no such file. Pretrained weights are a local "
                          ".pth state dict (never downloaded); set model.pretrained: null to train from scratch.")
    state = torch.load(file, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.startswith("fc.")]:
        raise ConfigError(f"{path}: does not match {type(net).__name__} (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")


class MultiTaskNet(nn.Module):
    """Backbone → features → one linear head per task. Returns (features, {task: logits})."""

    def __init__(self, backbone: nn.Module, task_classes: dict[str, int], dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({task: nn.Linear(backbone.num_features, n) for task, n in task_classes.items()})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = self.backbone(x)
        dropped = self.dropout(features)
        return features, {task: head(dropped) for task, head in self.heads.items()}
