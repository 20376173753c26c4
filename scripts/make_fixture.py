#!/usr/bin/env python
"""Regenerate the committed model fixture: a `tiny`-backbone model trained on the shapes test data.

    python scripts/make_fixture.py [--out models/fixtures]

Writes shapes-tiny.onnx (+ .json, .parity.json, .vectors/) — well under 1 MB — which the bare
station install's tests, `mscvision predict` and `mscvision verify` run on in CI. Needs
mscvision[train]. Paths recorded in the metadata are relative to a scratch folder, not this machine.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

from mscvision.synth.shapes import make_shapes_dataset, tiny_overrides

REPO = Path(__file__).resolve().parents[1]

NAME = "shapes-tiny"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "models" / "fixtures")
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    out = args.out.resolve()

    import torch

    from mscvision.export import export_run
    from mscvision.training.config import load_config
    from mscvision.training.fit import train

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="mscvision-fixture-") as scratch:
        os.chdir(scratch)  # relative paths: the fixture's metadata names no machine's folders
        manifest = make_shapes_dataset(Path("shapes"), n=96, groups=12)
        overrides = [*tiny_overrides(manifest, Path("runs"), epochs=args.epochs), f"name={NAME}", "seed=1"]
        result = train(load_config(None, overrides))
        export_run(result.run_dir, out / f"{NAME}.onnx", "fp32", threads=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
