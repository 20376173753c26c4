"""Training layer: core + torch, torchvision, Lightning, albumentations."""

import os

# albumentations 2.0.8 checks PyPI for updates at import: never call the network from training.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
