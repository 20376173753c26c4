"""Inputs for prediction: expand files / folders / globs, then check, decode and preprocess each one.

Decoding and preprocessing are core's ``decode_image`` and ``preprocess``: the very functions the
training data set uses, so a station sees the tensors the model was evaluated on. The checks here
only refuse an image, or doubt it (status ``review``), with a reason; they never alter one.

Order per image: the header is read and checked first (declared size against the model and the
per-image cap, memory reserved in a ``DecodeBudget`` shared by the decode threads), and only then are
the pixels decoded.
"""

from __future__ import annotations

import glob
import math
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from mscvision.core.errors import ImageError
from mscvision.core.imageio import DEFAULT_MAX_PIXELS, DecodedImage, ImageHeader, is_image_file, open_image
from mscvision.core.image_checks import measure_many, rule_reasons
from mscvision.core.preprocess import (flat_channels, flatness_rule, rescaled_size, select_channels, sorted_values,
                                       standardize, to_unit_range)
from mscvision.runtime.gate import image_check_reference
from mscvision.runtime.metadata import ModelMetadata

__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_DECODE_BUDGET_BYTES", "MIN_INPUT_SIDE", "CollectedInputs",
           "DecodeBudget", "PreparedInput", "ScaledInput", "check_input", "collect_inputs", "decode_budget",
           "load_input", "prepare_decoded", "prepare_input", "scale_decoded", "with_image_checks"]

_GLOB_CHARS = "*?["
# An image (after rescaling to the trained pixel size) must be at least this many pixels a side, and at
# least 1/MAX_UPSCALE of the model's input side: fitting a smaller one to the input invents the detail
# the model reads (a 1x1 image "resized" to 128x128 is a flat field with a confident label).
MIN_INPUT_SIDE = 8
MAX_UPSCALE = 8
# Bytes the decode threads may hold at once, in total. Per image the reservation is its decoded
# values times (stored bytes + 16): the decoded array plus up to four float32 working copies that
# preprocessing makes (conversion, percentile partition, scaling, clipping).
DEFAULT_DECODE_BUDGET_BYTES = 2 * 1024**3
_WORKING_BYTES_PER_VALUE = 16
_WIDEST_ITEMSIZE = 8  # float64 TIFF: the most bytes a stored value can take
_APPLEDOUBLE = "AppleDouble ._* files (macOS metadata, not images)"


@dataclass(frozen=True)
class PreparedInput:
    tensor: np.ndarray  # float32 (C, h, w), the model's input
    notes: tuple[str, ...] = ()  # what decoding / preprocessing assumed or did (alpha dropped, rescaled, ...)
    doubts: tuple[str, ...] = ()  # reasons this image must be `review` and get no label
    # the OOD gate's image checks (core.image_checks), measured from this one decode; None when the
    # model has none. ``rules``: the deterministic rules' reasons (another bit depth or pixel size)
    checks: dict[str, float] | None = None
    rules: tuple[str, ...] = ()


class DecodeBudget:
    """A cap on the bytes being decoded at once across threads: ``with budget.reserve(n):`` blocks
    until ``n`` bytes are free. A request larger than the whole budget raises ``ValueError`` at once
    (it could never be granted), so nothing deadlocks."""

    def __init__(self, max_bytes: int = DEFAULT_DECODE_BUDGET_BYTES):
        if max_bytes <= 0:
            raise ValueError(f"decode budget must be positive, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.in_use = 0
        self.peak = 0  # the most bytes ever reserved at once (reported, and checked by tests)
        self._cond = threading.Condition()

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        nbytes = max(0, int(nbytes))
        if nbytes > self.max_bytes:
            raise ValueError(f"{nbytes:,} bytes exceed the whole decode budget of {self.max_bytes:,}")
        with self._cond:
            self._cond.wait_for(lambda: self.in_use + nbytes <= self.max_bytes)
            self.in_use += nbytes
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= nbytes
                self._cond.notify_all()


def decode_budget(max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodeBudget:
    """One budget per run, shared by every decode thread, so that the cap holds in total: the
    default, or more when ``max_pixels`` is raised, so that one image at the cap still fits alone."""
    # counted as working_bytes counts it, with the widest value: a float64 image at the cap still fits
    return DecodeBudget(max(DEFAULT_DECODE_BUDGET_BYTES, max_pixels * (_WIDEST_ITEMSIZE + _WORKING_BYTES_PER_VALUE)))


def working_bytes(header: ImageHeader) -> int:
    """What decoding and preprocessing one image may hold at its peak (see DEFAULT_DECODE_BUDGET_BYTES)."""
    return header.values * (header.itemsize + _WORKING_BYTES_PER_VALUE)


def load_input(path: str | Path, metadata: ModelMetadata) -> np.ndarray:
    """One image file → the model's float32 (C, h, w) input; ``ImageError`` says why not."""
    return prepare_input(path, metadata).tensor


def prepare_input(path: str | Path, metadata: ModelMetadata, budget: DecodeBudget | None = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> PreparedInput:
    """One image file → the model's input, with its decode notes and any doubts.

    ``ImageError`` (path + reason) refuses it: unreadable, too large (judged from the header, before
    decoding), too small, non-finite pixels, an implausible pixel size, wrong channels or bit depth.
    """
    source = str(path)
    with open_image(path, max_pixels) as reader:
        header = reader.header
        check_size(header.height, header.width, header.pixel_size_um, metadata, source)
        with _reserved(budget, working_bytes(header), source):
            decoded = reader.decode()
            check_input(decoded, metadata, source)
            return prepare_decoded(decoded, metadata, source)


def prepare_decoded(decoded: DecodedImage, metadata: ModelMetadata, source: str) -> PreparedInput:
    """A decoded image (a file, or one tile of a whole field) → the model's input, notes, doubts and
    the OOD gate's image checks: the one path from pixels to a tensor that predict and qc share."""
    return with_image_checks([scale_decoded(decoded, metadata, source)], metadata)[0]


@dataclass(frozen=True)
class ScaledInput:
    """``prepare_decoded``'s first half: the model's input and what the image checks read."""

    decoded: DecodedImage
    selected: np.ndarray  # the model's channels of the decoded values
    ordered: np.ndarray  # preprocess.sorted_values(selected)
    unit: np.ndarray
    prepared: PreparedInput  # without the image checks yet


def scale_decoded(decoded: DecodedImage, metadata: ModelMetadata, source: str) -> ScaledInput:
    """The model's input (``ImageError`` when it cannot be made), notes and doubts of one image."""
    selected = select_channels(decoded.array, metadata.spec, source)
    ordered = sorted_values(selected)  # one sort for the scaling, the flatness rule and the image checks
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused just below, by name
        # preprocess() in its two halves: the image checks read the unit-range image
        unit = to_unit_range(decoded.array, metadata.spec, decoded.pixel_size_um, source=source, ordered=ordered)
        tensor = standardize(unit, metadata.spec)
    check_finite_tensor(tensor, decoded, source)
    doubts = _doubts(selected, decoded.pixel_size_um, metadata, ordered)
    prepared = PreparedInput(tensor, (*decoded.notes, *_rescale_notes(decoded, metadata)), doubts)
    return ScaledInput(decoded, selected, ordered, unit, prepared)


def with_image_checks(scaled: list[ScaledInput], metadata: ModelMetadata) -> list[PreparedInput]:
    """``prepare_decoded``'s second half: the OOD gate's image-check scores and rule reasons
    (runtime/gate.py; none without a gate), measured on all of ``scaled`` at once
    (``core.image_checks.measure_many``: qc passes the tiles of a field 16 at a time)."""
    reference = image_check_reference(metadata)
    if reference is None:
        return [x.prepared for x in scaled]
    scores = measure_many([x.selected for x in scaled], [x.unit for x in scaled], reference,
                          [x.ordered for x in scaled])
    out = []
    for x, checks in zip(scaled, scores, strict=True):
        h, w = x.decoded.array.shape[:2]
        rescaled = rescaled_size(h, w, metadata.spec, x.decoded.pixel_size_um) != (h, w)
        rules = rule_reasons(x.decoded.bit_depth, x.decoded.pixel_size_um, reference, rescaled)
        out.append(replace(x.prepared, checks=checks, rules=tuple(rules)))
    return out


@contextmanager
def _reserved(budget: DecodeBudget | None, nbytes: int, source: str) -> Iterator[None]:
    if budget is None:
        yield
        return
    if nbytes > budget.max_bytes:
        raise ImageError(source, f"needs about {nbytes / 2**20:,.0f} MiB to decode, more than the whole decode "
                                 f"budget ({budget.max_bytes / 2**20:,.0f} MiB); it was not decoded. Fix: crop it "
                                 "into fields.")
    with budget.reserve(nbytes):
        yield


def check_input(decoded: DecodedImage, metadata: ModelMetadata, source: str) -> None:
    """Refuse what the model was not trained for: too large (needs tiling), too small, or the wrong
    bit depth.

    Channel count and the spec's own bit depth are checked inside ``preprocess``, by the same code
    that training runs.
    """
    height, width = decoded.array.shape[:2]
    check_size(height, width, decoded.pixel_size_um, metadata, source)
    check_bit_depth(decoded.bit_depth, metadata, source)


def check_bit_depth(bit_depth: int, metadata: ModelMetadata, source: str) -> None:
    """Refuse another bit depth than trained when the model scales intensities by the bit depth."""
    depths = metadata.training_bit_depths
    if metadata.spec.intensity == "fixed" and depths and bit_depth not in depths:
        # fixed scaling divides by the bit-depth maximum, so another depth means other intensities
        raise ImageError(source, f"is {bit_depth}-bit; the model was trained on "
                                 f"{'/'.join(map(str, depths))}-bit images with fixed intensity scaling. "
                                 "Fix: supply images of the training bit depth.")


def check_finite_tensor(tensor: np.ndarray, decoded: DecodedImage, source: str) -> None:
    """Finite pixels can still scale to a non-finite input: float values spanning more than float32
    holds (e.g. -3e38 to 3e38) overflow ``x - low``. Refused here, naming the cause; the model would
    answer NaN, and the row would blame the model."""
    if np.isfinite(tensor).all():
        return
    raise ImageError(source, f"its pixel values ({decoded.array.min():g} to {decoded.array.max():g}) overflow "
                             "float32 when scaled, so the model's input would not be finite. Fix: save the image "
                             "with values in a sane range (e.g. 0-1 float, or 8/16-bit integers).")


def check_size(height: int, width: int, pixel_size_um: float | None, metadata: ModelMetadata,
               source: str) -> None:
    """Sizes as the model would see them (rescaled to its pixel size): not too large, not too small.

    Runs on the header's declared size before decoding, and again on the decoded array.
    """
    spec = metadata.spec
    h, w = rescaled_size(height, width, spec, pixel_size_um, source)  # refuses an implausible pixel size
    rescaled = f" ({w}x{h} px once rescaled from {pixel_size_um:g} to the model's {spec.pixel_size_um:g} µm/px)" \
        if (h, w) != (height, width) else ""
    if max(h, w) > metadata.max_input_side:
        raise ImageError(source, f"{width}x{height} px{rescaled} is much larger than the images this model was "
                                 f"trained on (it accepts at most {metadata.max_input_side} px a side). It is "
                                 "never shrunk silently. Fix: judge whole fields with `mscvision qc` (which tiles "
                                 "them), or crop them into fields the size of the training images.")
    min_h, min_w = (max(MIN_INPUT_SIDE, math.ceil(side / MAX_UPSCALE)) for side in spec.size)
    if h < min_h or w < min_w:
        raise ImageError(source, f"{width}x{height} px{rescaled} is too small: this model needs at least "
                                 f"{min_w}x{min_h} px (its input is {spec.size[1]}x{spec.size[0]}; nothing is "
                                 f"magnified more than {MAX_UPSCALE}x, nor read from under {MIN_INPUT_SIDE} px a "
                                 "side). Fix: supply the whole field or crop, not a thumbnail.")
    _check_padding(h, w, spec, f"{width}x{height} px{rescaled}", source)


def _check_padding(h: int, w: int, spec, size: str, source: str) -> None:
    """fit=crop_or_pad zero-pads a short axis: an input that is mostly padding is mostly not the image
    (a 16x16 crop would be 98% of a 128x128 input), so at most half of the input area may be padding."""
    if spec.fit != "crop_or_pad":
        return
    area = spec.size[0] * spec.size[1]
    content = min(h, spec.size[0]) * min(w, spec.size[1])
    if 2 * content < area:
        raise ImageError(source, f"{size} would fill only {content / area:.0%} of this model's "
                                 f"{spec.size[1]}x{spec.size[0]} input: fit=crop_or_pad pads the rest with zeros, "
                                 "and at most half of the input may be padding. Fix: supply the whole field or a "
                                 "larger crop.")


def _doubts(selected: np.ndarray, pixel_size_um: float | None, metadata: ModelMetadata,
            ordered: np.ndarray | None) -> tuple[str, ...]:
    flat = flat_channels(selected, metadata.spec, pixel_size_um, ordered)
    if not flat:
        return ()
    which = "the image is" if len(flat) == selected.shape[2] else f"channel(s) {flat} of the model's input are"
    return (f"{which} constant or nearly so ({flatness_rule(metadata.spec)}): a blank or "
            "saturated frame, not a cell to classify",)


def _rescale_notes(decoded: DecodedImage, metadata: ModelMetadata) -> tuple[str, ...]:
    spec = metadata.spec
    h, w = decoded.array.shape[:2]
    target = rescaled_size(h, w, spec, decoded.pixel_size_um)
    if target == (h, w):
        return ()
    return (f"rescaled from {decoded.pixel_size_um:g} to {spec.pixel_size_um:g} µm/px ({w}x{h} → "
            f"{target[1]}x{target[0]} px)",)


# ---------------------------------------------------------------------------------------------------
# Collecting the inputs: files, folders (optionally recursive), globs.


@dataclass
class CollectedInputs:
    paths: list[str] = field(default_factory=list)  # image files to predict, in order, without repeats
    problems: list[tuple[str, str]] = field(default_factory=list)  # (printable path, reason): error rows
    ignored: dict[str, int] = field(default_factory=dict)  # counted, deliberate skips: a printed warning

    # A sequence of its paths, so a caller that only wants the paths can use it as the old list.
    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths)

    def __getitem__(self, index):
        return self.paths[index]

    def ignore(self, what: str) -> None:
        self.ignored[what] = self.ignored.get(what, 0) + 1


def printable_path(path: str) -> str:
    """A path as text that can be printed and written to CSV/JSON: undecodable bytes of a file name
    (held by Python as lone surrogates) become backslash escapes such as ``\\xe9``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _is_text(path: str) -> bool:
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


_NOT_UTF8 = ("its name is not valid UTF-8, so no output row could name it faithfully. Fix: rename the "
             "file (e.g. `convmv -f latin1 -t utf8`).")


def collect_inputs(items: list[str], recursive: bool = False) -> CollectedInputs:
    """Files as given; folders → their image files (sorted; ``recursive`` descends, following links
    to folders but never round a loop); globs expanded.

    Nothing is dropped silently: an explicit file that does not exist stays in ``paths`` (it becomes a
    "no such file" row); a glob that matches nothing, an unlistable folder, a link loop, a broken link
    or a name that is not UTF-8 is a ``problem``; AppleDouble ``._*`` files are counted in ``ignored``.
    """
    out = CollectedInputs()
    for item in items:
        if os.path.isdir(item):
            found: list[str] = []
            _scan_folder(item, recursive, out, found)
            _add_files(sorted(found), out)
        elif not os.path.lexists(item) and any(c in item for c in _GLOB_CHARS):
            matches = [m for m in sorted(glob.glob(item, recursive=recursive)) if os.path.isfile(m)]
            if not matches:
                out.problems.append((printable_path(item), "no file matches this pattern. Fix: check the "
                                                           "pattern, or quote it so the shell does not expand it."))
            kept = []
            for m in matches:
                if os.path.basename(m).startswith("._"):
                    out.ignore(_APPLEDOUBLE)
                else:
                    kept.append(m)
            _add_files(kept, out)
        elif os.path.islink(item) and not os.path.exists(item):
            out.problems.append((printable_path(item), "a broken symbolic link (its target does not exist)."))
        else:
            _add_files([item], out)  # a file, or a missing name: decoding will say "no such file"
    out.paths = list(dict.fromkeys(out.paths))  # drop repeats, keep order
    out.problems = list(dict.fromkeys(out.problems))
    return out


def _add_files(paths: list[str], out: CollectedInputs) -> None:
    for path in paths:
        if _is_text(path):
            out.paths.append(path)
        else:
            out.problems.append((printable_path(path), _NOT_UTF8))


def _scan_folder(top: str, recursive: bool, out: CollectedInputs, found: list[str]) -> None:
    """Image files under ``top`` into ``found``; problems and skips into ``out``.

    Iterative (a hostile tree deeper than Python's recursion limit is still just a tree). Each
    pending folder carries the (device, inode) of the folders above it, which detect a link loop;
    ``seen`` stops a folder reached twice (two links) being read twice.
    """
    pending: list[tuple[str, frozenset[tuple[int, int]]]] = [(top, frozenset())]
    seen: set[tuple[int, int]] = set()
    while pending:
        folder, ancestors = pending.pop()
        try:
            st = os.stat(folder)
            key = (st.st_dev, st.st_ino)
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            out.problems.append((printable_path(folder), f"this folder cannot be listed ({_os_reason(exc)}). "
                                                         "Fix: check its permissions, or leave it out."))
            continue
        if key in seen:
            out.ignore("links to folders already searched")
            continue
        seen.add(key)
        subfolders = []
        for entry in entries:
            path = os.path.join(folder, entry.name)
            try:
                is_dir = entry.is_dir()  # follows links
                is_file = not is_dir and entry.is_file()
                broken = entry.is_symlink() and not os.path.exists(path)
                sub = os.stat(path) if is_dir and recursive else None
            except OSError as exc:
                out.problems.append((printable_path(path), f"cannot be examined ({_os_reason(exc)}). Fix: check "
                                                           "the permissions of its folder."))
                continue
            if is_dir:
                if sub is None:
                    continue  # not recursive: sub-folders are not searched (as asked)
                if (sub.st_dev, sub.st_ino) in ancestors | {key}:
                    out.problems.append((printable_path(path), "a symbolic link loop (it leads back to a folder "
                                                               "above it); not followed. Fix: remove the link."))
                else:
                    subfolders.append((path, ancestors | {key}))
                continue
            if not is_image_file(entry.name):
                continue
            if entry.name.startswith("._"):
                out.ignore(_APPLEDOUBLE)
            elif broken:
                out.problems.append((printable_path(path), "a broken symbolic link (its target does not exist)."))
            elif is_file:
                found.append(path)
            else:
                out.problems.append((printable_path(path), "not a regular file (a device, socket or pipe?)."))
        pending.extend(reversed(subfolders))  # depth first, in name order


def _os_reason(exc: OSError) -> str:
    return f"{type(exc).__name__}: {exc.strerror or exc}"
