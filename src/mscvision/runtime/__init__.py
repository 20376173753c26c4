"""The torch-free runtime: load an exported ONNX model, check and preprocess inputs, predict.

Imports numpy, Pillow/tifffile (through core) and onnxruntime only; never torch (a test enforces
it). This package's ``__init__`` imports nothing, so `mscvision --help` stays fast.
"""
