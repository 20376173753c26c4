"""mscvision: morphology and differentiation-state classification of cultured MSC images.

Layers (each imports only the ones before it; docs/architecture.md has the table):
``core`` (numpy + Pillow/tifffile) → ``synth`` (numpy) | ``runtime`` (+ onnxruntime)
→ ``training`` (+ torch, Lightning, albumentations) → ``export`` (+ onnx) → ``benchmarks``
→ the commands (``commands``, ``cli``).
"""

__version__ = "0.1.0"
