"""Backbones (torchvision, any input channel count, a stem sized for the crops) and per-task heads.

``stem_stride`` is the total downsampling of the stem. ImageNet stems shrink by 4 (ResNet: 7x7/2 +
max-pool; ConvNeXt: 4x4/4 patchify) or 2 (EfficientNet, MobileNet): right for 224-px photos,
wasteful on 64-px nucleus crops, where a stride-1 or -2 stem keeps the detail (at a FLOP cost;
see README "Backbones").
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from mscvision.core.errors import ConfigError
from mscvision.training.config import BACKBONES, RESNETS  # there, the config checks names on load


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


class PooledFeatures(nn.Module):
    """A torchvision ``features`` trunk + global average pool (+ ConvNeXt's final norm) → (N, C)."""

    def __init__(self, features: nn.Module, num_features: int, post_pool: nn.Module | None = None):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.post_pool = post_pool or nn.Identity()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.post_pool(self.pool(self.features(x))), 1)


def build_backbone(name: str, in_channels: int, stem_stride: int = 4, pretrained: str | None = None) -> nn.Module:
    """A feature extractor returning (N, num_features); ``num_features`` is set on the module."""
    if name == "tiny":
        return TinyBackbone(in_channels)
    if name not in BACKBONES:
        raise ConfigError(f"model.backbone={name!r}: use one of {BACKBONES}")
    net = getattr(torchvision.models, name)(weights=None)
    if pretrained:
        _load_local_weights(net, pretrained)
    if name in RESNETS:
        return _resnet_trunk(net, in_channels, stem_stride)
    return _feature_trunk(name, net, in_channels, stem_stride)


def _resnet_trunk(net: nn.Module, in_channels: int, stem_stride: int) -> nn.Module:
    if stem_stride not in (1, 2, 4):
        raise ConfigError(f"model.stem_stride={stem_stride}: a ResNet stem takes 1, 2 or 4")
    kernel, stride, padding = (7, 2, 3) if stem_stride == 4 else (3, stem_stride, 1)
    net.conv1 = _adapt_conv(net.conv1, in_channels, kernel, stride, padding)
    if stem_stride < 4:
        net.maxpool = nn.Identity()  # small crops: keep the detail the ImageNet stem would drop
    net.num_features = net.fc.in_features
    net.fc = nn.Identity()
    return net


def _feature_trunk(name: str, net: nn.Module, in_channels: int, stem_stride: int) -> nn.Module:
    stem = net.features[0][0]
    native = stem.stride[0]
    allowed = (2, 4) if name == "convnext_tiny" else (1, 2)
    if stem_stride not in allowed:
        raise ConfigError(f"model.stem_stride={stem_stride}: {name} takes {allowed} (native {native})")
    if name == "convnext_tiny":  # patchify stem: kernel = stride
        kernel, padding = stem_stride, 0
    else:
        kernel, padding = stem.kernel_size[0], stem.padding[0]
    net.features[0][0] = _adapt_conv(stem, in_channels, kernel, stem_stride, padding)
    if name == "convnext_tiny":
        return PooledFeatures(net.features, net.classifier[0].normalized_shape[0], net.classifier[0])
    return PooledFeatures(net.features, _last_channels(net.features))


def _last_channels(features: nn.Module) -> int:
    return [m for m in features.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


def _adapt_conv(conv: nn.Conv2d, in_channels: int, kernel: int, stride: int, padding: int) -> nn.Conv2d:
    """The first conv for ``in_channels`` inputs; pretrained RGB filters are averaged and tiled.

    The RGB mean is spread over the new channels (scaled by 3 / in_channels) so a pretrained stem
    keeps its activation scale on greyscale or N-channel microscopy. A resized kernel starts fresh.
    """
    new = nn.Conv2d(in_channels, conv.out_channels, kernel, stride, padding, bias=conv.bias is not None)
    if kernel == conv.kernel_size[0]:
        with torch.no_grad():
            mean = conv.weight.mean(dim=1, keepdim=True)
            new.weight.copy_(mean.repeat(1, in_channels, 1, 1) * (3.0 / in_channels))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
    return new


def _load_local_weights(net: nn.Module, path: str) -> None:
    """ImageNet weights from a local state-dict file; the classifier is dropped, never downloaded."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"model.pretrained={path!r}: no such file. Pretrained weights are a local "
                          ".pth state dict (never downloaded); set model.pretrained: null to train from scratch.")
    state = torch.load(file, map_location="cpu", weights_only=True)
    own = net.state_dict()
    head = {k for k in own if k.startswith(("fc.", "classifier."))}
    state = {k: v for k, v in state.items() if k not in head}
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state and k not in head]
    unexpected = [k for k in state if k not in own]
    if mismatched or missing or unexpected:
        raise ConfigError(f"{path}: does not fit this backbone (shape mismatch {mismatched[:3]}, missing "
                          f"{missing[:3]}, unexpected {unexpected[:3]}). Fix: use weights saved from "
                          "torchvision's same architecture.")
    net.load_state_dict(state, strict=False)


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
