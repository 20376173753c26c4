#!/usr/bin/env python
"""Write the OOD sources of issue 16 for one model, each in the model's input format, to measure its
gate with ``mscvision evaluate MODEL DATA --ood NAME=OUT/NAME ...``.

    python scripts/ood_sources.py MODEL --out DIR [--data DATA [--split test]] [--near DATA --classes A,B,C]
                                  [--only NAME,...] [--n 200] [--seed 0] [--crop-size PX] [--full-well E]

The format is read from the model's metadata: the channels it reads (``preprocess.in_channels`` /
``channels``: grey sources are repeated into as many file channels), its first training bit depth
(``input.training_bit_depths``) with the full scale its image checks were fitted with (else
2**depth - 1), and crops at ``--crop-size`` (default: the model's input size, ``preprocess.size``).

Sources (one folder each under DIR, images in NAME/images/, NAME/manifest.csv when labelled):
- covariate shifts of the labelled DATA (``--data``: a manifest, or a run's split.csv with
  ``--split test``), every image kept at its size, dtype and labels (the manifest keeps the task
  columns and group): ``blur1`` / ``blur2`` / ``blur3`` (Gaussian, sigma px), ``gamma0.5`` /
  ``gamma2``, ``poisson10x`` (10x fewer photons; the photon model in core/image_shifts.py: the value
  as full_well / full-scale electrons per grey level, ``--full-well`` default = full scale, i.e.
  one electron per level), ``zoom2x`` / ``shrink2x`` (objects 2x larger / smaller: a pixel size
  other than trained, the file's stated pixel size left as it was);
- near-OOD (``--near DATA --classes A,B,C``): ``held_out``, the rows of DATA whose label is one of
  those classes (every split), copied with their labels: for a model trained without them;
- far-OOD, unlabelled, ``--n`` images each: ``synth`` (whole fields of ``mscvision synth
  --field-size``, cut into crops), ``photos`` (the natural photographs shipped with scikit-image,
  in grey, random crops; needs ``pip install 'mscvision[eval]'``), ``blank``, ``saturated``, ``noise``.

Each folder is written under a temporary name and renamed when complete; ``DIR/sources.json`` says
how each was made. Exit codes as mscvision's (2: usage or data error).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from mscvision.cli import guarded
from mscvision.core import image_shifts as shifts
from mscvision.core.errors import ConfigError, DataError
from mscvision.core.fileio import write_json_atomic, write_text_atomic
from mscvision.core.imageio import decode_image, write_image

SHIFTS = ("blur1", "blur2", "blur3", "gamma0.5", "gamma2", "poisson10x", "zoom2x", "shrink2x")
NEAR = "held_out"
FAR = ("synth", "photos", "blank", "saturated", "noise")
# scikit-image's natural photographs (skimage.data, shipped in the wheel, no download); its
# microscopy images (cell, human_mitosis, immunohistochemistry, retina) are left out on purpose
PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "moon", "rocket", "brick", "grass", "gravel", "clock")
SYNTH_FIELD_CROPS = 8  # a synthetic field is this many crops a side (at least 256 px)


class Format:
    """The model's input format, from its metadata."""

    def __init__(self, metadata, crop_size: int | None, full_well: float | None):
        spec, raw = metadata.spec, metadata.raw
        self.file_channels = max(spec.channels) + 1 if spec.channels else spec.in_channels
        self.bit_depth = int(metadata.training_bit_depths[0]) if metadata.training_bit_depths else 8
        if self.bit_depth not in (8, 16):
            raise ConfigError(f"the model was trained on {self.bit_depth}-bit images; this script writes 8- or "
                              "16-bit sources only")
        self.dtype = np.dtype(np.uint8 if self.bit_depth == 8 else np.uint16)
        reference = (((raw.get("ood") or {}).get("image_checks") or {}).get("reference") or {})
        self.top = float((reference.get("full_scale") or {}).get(str(self.bit_depth)) or 2 ** self.bit_depth - 1)
        self.reference = reference or None
        self.size = (crop_size, crop_size) if crop_size else tuple(spec.size)
        self.full_well = full_well

    def record(self) -> dict:
        return {"file_channels": self.file_channels, "bit_depth": self.bit_depth, "full_scale": self.top,
                "crop_size": list(self.size)}

    def frame(self, unit: np.ndarray) -> np.ndarray:
        """A grey (h, w) image in [0, 1] → the model's dtype and full scale, its channels repeated."""
        x = shifts.as_dtype(np.asarray(unit, np.float64) * self.top, self.dtype, self.top)
        return self.channels(x)

    def channels(self, x: np.ndarray) -> np.ndarray:
        """(h, w) or (h, w, C) → (h, w) for one file channel, else (h, w, file_channels) (grey repeated)."""
        if x.ndim == 3 and x.shape[2] == self.file_channels:
            return x
        grey = x if x.ndim == 2 else x.mean(axis=2).astype(x.dtype)
        return grey if self.file_channels == 1 else np.repeat(grey[:, :, None], self.file_channels, axis=2)


def top_of(x: np.ndarray, fmt: Format) -> float:
    """Full scale of one labelled image: the model's fitted one for its bit depth, else its dtype's."""
    if fmt.reference is not None:
        from mscvision.core.image_checks import full_scale

        return full_scale(x, fmt.reference)
    return float(np.iinfo(x.dtype).max) if np.issubdtype(x.dtype, np.integer) else 1.0


def shifted(name: str, x: np.ndarray, top: float, rng: np.random.Generator, full_well: float | None) -> np.ndarray:
    if name.startswith("blur"):
        return shifts.blurred(x, float(name[4:]), top)
    if name.startswith("gamma"):
        return shifts.gamma(x, float(name[5:]), top)
    if name == "poisson10x":
        return shifts.fewer_photons(x, 10.0, top, rng, full_well)
    if name == "zoom2x":
        return shifts.rescale(x, 2.0, top)
    if name == "shrink2x":
        return shifts.rescale(x, 0.5, top)
    raise ValueError(name)


def image_name(index: int, array: np.ndarray, like: str = ".png") -> str:
    """PNG holds 1 channel (8/16-bit) or 3 (8-bit); anything else, or a TIFF original, is a TIFF."""
    png = like.lower() == ".png" and (array.ndim == 2 or array.shape[2] == 1 or
                                      (array.shape[2] == 3 and array.dtype == np.uint8))
    return f"images/{index:06d}{'.png' if png else '.tif'}"


class SourceFolder:
    """One source written into a temporary folder beside its final place, renamed when complete."""

    def __init__(self, out: Path, name: str, overwrite: bool):
        self.final = out / name
        if self.final.exists() and not overwrite:
            raise ConfigError(f"{self.final}: exists. Fix: pass --overwrite, or another --out.")
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=out))
        (self.tmp / "images").mkdir()
        self.rows: list[dict] = []

    def write(self, rel: str, array: np.ndarray, pixel_size_um: float | None = None) -> str:
        write_image(self.tmp / rel, array, pixel_size_um=pixel_size_um if rel.endswith(".tif") else None)
        return rel

    def finish(self, columns: list[str] | None) -> int:
        if columns:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.rows)
            write_text_atomic(self.tmp / "manifest.csv", buf.getvalue())
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.tmp, self.final)
        return len(self.rows) if columns else len(list((self.final / "images").iterdir()))

    def abandon(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def labelled(data: str, split: str | None, metadata):
    from mscvision.runtime.evaluate import load_labelled_data

    return load_labelled_data(data, metadata.tasks, split)


def manifest_columns(data) -> list[str]:
    return ["path", *dict.fromkeys(data.columns.values()), "group"]


def label_cells(data, i: int) -> dict:
    return {column: data.labels[task][i] for task, column in data.columns.items()}


def write_shift(folder: SourceFolder, name: str, data, fmt: Format, rng) -> None:
    for i, path in enumerate(data.paths):
        decoded = decode_image(path)
        x = decoded.array[:, :, 0] if decoded.array.shape[2] == 1 else decoded.array
        y = shifted(name, x, top_of(x, fmt), rng, fmt.full_well)
        rel = folder.write(image_name(i, y, Path(path).suffix), y, decoded.pixel_size_um)
        folder.rows.append({"path": rel, **label_cells(data, i), "group": data.groups[i]})


def write_near(folder: SourceFolder, data, classes: set[str]) -> None:
    for i, path in enumerate(data.paths):
        if not any(data.labels[task][i] in classes for task in data.labels):
            continue
        rel = f"images/{i:06d}{Path(path).suffix.lower()}"
        shutil.copyfile(path, folder.tmp / rel)
        folder.rows.append({"path": rel, **label_cells(data, i), "group": data.groups[i]})


def crops(image: np.ndarray, size: tuple[int, int], k: int, rng) -> list[np.ndarray]:
    """``k`` crops of ``size`` at random positions (none when the image is smaller)."""
    h, w = image.shape[:2]
    if h < size[0] or w < size[1]:
        return []
    ys, xs = rng.integers(0, h - size[0] + 1, k), rng.integers(0, w - size[1] + 1, k)
    return [image[y:y + size[0], x:x + size[1]] for y, x in zip(ys, xs)]


def far_images(name: str, fmt: Format, n: int, rng, seed: int) -> list[np.ndarray]:
    shape = fmt.size if fmt.file_channels == 1 else (*fmt.size, fmt.file_channels)
    if name == "blank":
        return [shifts.blank_frame(shape, fmt.dtype, fmt.top, rng) for _ in range(n)]
    if name == "saturated":
        return [shifts.saturated_frame(shape, fmt.dtype, fmt.top) for _ in range(n)]
    if name == "noise":
        return [shifts.noise_frame(shape, fmt.dtype, fmt.top, rng) for _ in range(n)]
    if name == "photos":
        return photo_crops(fmt, n, rng)
    if name == "synth":
        return synth_crops(fmt, n, rng, seed)
    raise ValueError(name)


def grey(photo: np.ndarray) -> np.ndarray:
    """A photograph in [0, 1] grey: luminance (Rec. 709 weights, as skimage.color.rgb2gray) for RGB(A)."""
    x = np.asarray(photo, np.float64) / (255.0 if photo.dtype == np.uint8 else 1.0)
    return x if x.ndim == 2 else x[:, :, :3] @ np.array([0.2125, 0.7154, 0.0721])


def photo_crops(fmt: Format, n: int, rng) -> list[np.ndarray]:
    try:
        import skimage.data
    except ModuleNotFoundError:
        raise ConfigError("the photos source needs scikit-image: pip install 'mscvision[eval]' (or leave photos "
                          "out with --only)") from None
    per_photo = math.ceil(n / len(PHOTOS))
    out = []
    for name in PHOTOS:
        out += [fmt.frame(c) for c in crops(grey(getattr(skimage.data, name)()), fmt.size, per_photo, rng)]
    return out[:n]


def synth_crops(fmt: Format, n: int, rng, seed: int) -> list[np.ndarray]:
    """Crops of whole synthetic fields (``mscvision synth --field-size``, phase contrast; the 2-channel
    fluorescence modality for a 2-channel model), brought to the model's bit depth and channels."""
    from mscvision.synth.dataset import generate_dataset, read_manifest_rows

    side = max(256, SYNTH_FIELD_CROPS * max(fmt.size))
    per_field = (side // fmt.size[0]) * (side // fmt.size[1])
    fields = math.ceil(n / per_field)
    modality = "fluorescence" if fmt.file_channels == 2 else "phase"
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = generate_dataset(tmp, n=fields, seed=seed, modality=modality, bit_depth=fmt.bit_depth,
                                    field_size=side)
        for row in read_manifest_rows(manifest):
            field = decode_image(Path(tmp) / row["path"]).array
            scale = fmt.top / float(np.iinfo(field.dtype).max)  # a 12-bit model: the field's 16 bits scaled down
            for crop in crops(field, fmt.size, per_field, rng):
                x = shifts.as_dtype(crop.astype(np.float64) * scale, fmt.dtype, fmt.top)
                out.append(fmt.channels(x[:, :, 0] if x.shape[2] == 1 else x))
    return out[:n]


def chosen(args) -> list[str]:
    available = [*(SHIFTS if args.data else ()), *([NEAR] if args.near else ()), *FAR]
    if not args.only:
        return [s for s in available if s != "photos" or _has_skimage()]
    names = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in names if s not in (*SHIFTS, NEAR, *FAR)]
    if unknown:
        raise ConfigError(f"--only {','.join(unknown)}: no such source; the sources are {', '.join((*SHIFTS, NEAR, *FAR))}")
    missing = [s for s in names if s not in available]
    if missing:
        raise ConfigError(f"--only {','.join(missing)}: needs --data (covariate shifts) or --near with --classes "
                          "(held_out)")
    return names


def _has_skimage() -> bool:
    import importlib.util

    return importlib.util.find_spec("skimage") is not None


def run(args: argparse.Namespace) -> int:
    from mscvision.runtime.model import read_metadata

    if args.n < 1 or (args.crop_size is not None and args.crop_size < 8):
        raise ConfigError("--n must be >= 1 and --crop-size >= 8 px")
    if args.near and not args.classes:
        raise ConfigError("--near needs --classes A,B,C (the classes held out of the model's training)")
    metadata = read_metadata(args.model)
    fmt = Format(metadata, args.crop_size, args.full_well)
    names = chosen(args)
    if not args.only and "photos" not in names:
        print("warning: scikit-image is not installed: the photos source is left out (pip install "
              "'mscvision[eval]')", file=sys.stderr)
    data = labelled(args.data, args.split, metadata) if args.data and set(names) & set(SHIFTS) else None
    near = labelled(args.near, "all", metadata) if NEAR in names else None  # every row: none was trained on
    classes = {c.strip() for c in (args.classes or "").split(",") if c.strip()}
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    record = {"model": str(args.model), "format": fmt.record(), "seed": args.seed, "sources": {}}
    for name in names:
        folder = SourceFolder(args.out, name, args.overwrite)
        try:
            if name in SHIFTS:
                write_shift(folder, name, data, fmt, rng)
                columns = manifest_columns(data)
            elif name == NEAR:
                write_near(folder, near, classes)
                if not folder.rows:
                    raise DataError(f"{near.source}: no row has a label in {sorted(classes)}. Fix: check --classes.")
                columns = manifest_columns(near)
            else:
                for i, x in enumerate(far_images(name, fmt, args.n, rng, args.seed)):
                    folder.write(image_name(i, x), x)
                columns = None
            count = folder.finish(columns)
        except BaseException:
            folder.abandon()
            raise
        record["sources"][name] = {"path": str(folder.final), "images": count, "labelled": bool(columns),
                                   "from": str(data.source) if name in SHIFTS else
                                   str(near.source) if name == NEAR else "generated"}
        print(f"{name}: {count} images in {folder.final}", file=sys.stderr)
    record["photon_model"] = (f"poisson10x: value x is x * full_well / {fmt.top:g} electrons (full_well "
                              f"{args.full_well or fmt.top:g}); Poisson at a tenth of that, scaled back")
    write_json_atomic(args.out / "sources.json", record)
    print("mscvision evaluate " + " ".join([str(args.model), args.data or "DATA"] + [f"--ood {n}={args.out / n}" for n in names]))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, metavar="MODEL", help="the exported .onnx model (its metadata sets the format)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--data", help="labelled in-distribution data to shift: a manifest, or a run's split.csv with --split")
    p.add_argument("--split", choices=("train", "val", "test", "all"), help="rows of --data to shift (e.g. test)")
    p.add_argument("--near", metavar="DATA", help="a manifest holding the held-out classes' images")
    p.add_argument("--classes", metavar="A,B,C", help="with --near: the classes held out of the model's training")
    p.add_argument("--only", metavar="NAME,...", help=f"only these sources (of {', '.join((*SHIFTS, NEAR, *FAR))})")
    p.add_argument("--n", type=int, default=200, help="images per far-OOD source")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crop-size", type=int, help="side of the far-OOD crops (default: the model's input size)")
    p.add_argument("--full-well", type=float, help="electrons at full scale for poisson10x (default: the full scale)")
    p.add_argument("--overwrite", action="store_true", help="replace source folders already in --out")
    return p


def main(argv: list[str] | None = None) -> int:
    return guarded(run, parser().parse_args(argv), "scripts/ood_sources.py")


if __name__ == "__main__":
    sys.exit(main())
