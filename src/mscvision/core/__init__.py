"""The numpy core: decode, preprocess, tasks/labels, manifests, splits, metrics, decisions.

Nothing here may import torch, torchvision, lightning or albumentations (tests enforce it).
"""
