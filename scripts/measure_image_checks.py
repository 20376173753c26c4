"""The image checks' in-distribution false-alarm rates and their flag rates on artefact frames.

    python scripts/measure_image_checks.py mitocheck      # /work/shared/data/mitocheck (8-bit, 64 px)
    python scripts/measure_image_checks.py synth [DIR]    # a synthetic set (default: generated, 600 crops)

Groups are split 50 / 25 / 25 into reference (the "training" images), calibration and test (by a
hash of the group name: no group in two parts). Each check fires at p <= its share of alpha
(conformal.bonferroni_shares, with and without a learned score beside it). Printed per check: the
test flag rate (in-distribution: should be near its share) and the flag rate on blank, saturated,
pure-noise frames, Gaussian blur (sigma 1 / 2 px) and exposure changes of the test images.
Numpy only; the station's own functions (decode_image, to_unit_range, measure).
"""

from __future__ import annotations

import csv
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

from mscvision.core.conformal import bonferroni_shares, combine, p_value
from mscvision.core.image_checks import CHECKS, fit_reference, measure_image
from mscvision.core.image_shifts import as_dtype, blurred, fewer_photons, gamma
from mscvision.core.imageio import decode_image
from mscvision.core.preprocess import PreprocessSpec

ALPHA = 0.05
MITOCHECK = Path("/work/shared/data/mitocheck/manifest.csv")
SPECS = {"mitocheck": PreprocessSpec(in_channels=1, percentile_low=0.5, percentile_high=99.9, bit_depth=8,
                                     size=(48, 48), fit="resize"),
         "synth": PreprocessSpec(in_channels=1, size=(112, 112), fit="resize")}


def shifted_sources(test: list[np.ndarray], rng) -> dict[str, list[np.ndarray]]:
    top = float(np.iinfo(test[0].dtype).max)
    shape, dtype = test[0].shape, test[0].dtype
    return {
        "blank": [as_dtype(np.full(shape, np.median(x)) + rng.normal(0, 0.5, shape), dtype, top) for x in test],
        "saturated": [np.full(shape, int(top), dtype) for _ in test],
        "pure noise": [as_dtype(rng.uniform(0, top, shape), dtype, top) for x in test],
        "blur sigma 1": [blurred(x, 1.0, top) for x in test],
        "blur sigma 2": [blurred(x, 2.0, top) for x in test],
        "gamma 0.5": [gamma(x, 0.5, top) for x in test],
        "gamma 2": [gamma(x, 2.0, top) for x in test],
        "exposure x0.5": [as_dtype(x * 0.5, dtype, top) for x in test],
        "poisson 10x fewer photons": [fewer_photons(x, 10.0, top, rng) for x in test],
    }


def part(group: str) -> str:
    h = zlib.crc32(group.encode()) % 4
    return "reference" if h < 2 else ("calibration" if h == 2 else "test")


def load(manifest: Path) -> dict[str, list[np.ndarray]]:
    parts: dict[str, list[np.ndarray]] = {"reference": [], "calibration": [], "test": []}
    with open(manifest, newline="") as f:
        for row in csv.DictReader(f):
            parts[part(row["group"])].append(decode_image(manifest.parent / row["path"]).array)
    return parts


def scores(images: list[np.ndarray], spec: PreprocessSpec, reference: dict) -> dict[str, np.ndarray]:
    measured = [measure_image(x, spec, None, reference) for x in images]
    return {c: np.array([m[c] for m in measured]) for c in CHECKS}


def main(argv: list[str]) -> None:
    which = argv[0] if argv else "mitocheck"
    if which == "mitocheck":
        manifest = MITOCHECK
    elif len(argv) > 1:
        manifest = Path(argv[1]) / "manifest.csv"
    else:
        from mscvision.synth.dataset import generate_dataset
        manifest = generate_dataset(tempfile.mkdtemp(), n=600, seed=1, size=128)
    spec = SPECS[which]
    parts = load(manifest)
    reference = fit_reference(parts["reference"], [8, 16])
    calibration = scores(parts["calibration"], spec, reference)
    sources = {"in-distribution test": parts["test"], **shifted_sources(parts["test"], np.random.default_rng(0))}
    print(f"{which}: {len(parts['reference'])} reference, {len(parts['calibration'])} calibration, "
          f"{len(parts['test'])} test images; alpha {ALPHA}")
    for learned in (None, "learned"):
        shares = bonferroni_shares(CHECKS, learned)
        levels = {c: shares[c] * ALPHA for c in CHECKS}
        print(f"\nimage checks at {levels[CHECKS[0]]:.4f} each ({'with' if learned else 'without'} a learned score "
              f"taking alpha/2; combined = any image check)")
        print(f"{'source':28s}" + "".join(f"{c:>13s}" for c in CHECKS) + f"{'combined':>10s}")
        for name, images in sources.items():
            measured = scores(images, spec, reference)
            p = {c: p_value(measured[c], calibration[c]) for c in CHECKS}
            fired = {c: np.mean(p[c] <= levels[c]) for c in CHECKS}
            combined = np.mean([combine({c: float(p[c][i]) for c in CHECKS}, ALPHA,
                                        {c: shares[c] for c in CHECKS}).flagged for i in range(len(images))])
            print(f"{name:28s}" + "".join(f"{fired[c]:13.3f}" for c in CHECKS) + f"{combined:10.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
