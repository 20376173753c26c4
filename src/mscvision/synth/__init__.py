"""The procedural MSC-culture generator: the embedded default data set (numpy only).

    from mscvision.synth import generate_dataset
    manifest = generate_dataset("data/synth", n=2400, seed=0)   # -> data/synth/manifest.csv

Phase-contrast (default) or two-channel fluorescence crops of cultured mesenchymal stromal
cells, labelled for two tasks on the same image: ``morphology`` and ``differentiation``.
"""

from mscvision.synth.dataset import GENERATOR_VERSION, generate_dataset, manifest_columns, read_manifest_rows
from mscvision.synth.labels import DIFFERENTIATION_CLASSES, MORPHOLOGY_CLASSES

__all__ = ["DIFFERENTIATION_CLASSES", "GENERATOR_VERSION", "MORPHOLOGY_CLASSES", "generate_dataset",
           "manifest_columns", "read_manifest_rows"]
