"""Export: a trained checkpoint → one self-describing ONNX file, parity-gated, with variants and
conformance vectors. Imports torch (through training) and onnx; the runtime needs neither.

    from mscvision.export import export_run
    export_run("runs/default", "models/default.onnx", precision="int8")
"""

from mscvision.export.pipeline import PRECISIONS, ParityError, export_run

__all__ = ["PRECISIONS", "ParityError", "export_run"]
