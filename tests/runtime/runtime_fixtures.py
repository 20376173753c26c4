"""Helpers shared by the runtime tests: the committed fixture model, a folder of good images, and a
minimal protobuf writer. A uniquely named module, not a tests/runtime/conftest.py: a second
conftest would take the module name ``conftest`` from the root one that ``from conftest import``
reads. Import the fixtures by name into a test module to use them there."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import pytest

from conftest import REPO, make_shapes_dataset
from mscvision.runtime.model import load_model
from mscvision.runtime.verify import default_vectors_dir

FIXTURE = REPO / "models" / "fixtures" / "shapes-tiny.onnx"


@pytest.fixture(scope="module")
def model():
    return load_model(FIXTURE, threads=1)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Six good 32-px images like the fixture's training data, in a folder."""
    root = tmp_path_factory.mktemp("images")
    make_shapes_dataset(root, n=6, size=32)
    return root / "images"


@pytest.fixture
def vectors(tmp_path) -> Path:
    """A copy of the fixture's conformance vectors, to edit."""
    folder = tmp_path / "vectors"
    shutil.copytree(default_vectors_dir(FIXTURE), folder)
    return folder


def png_declaring(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR declares width x height 8-bit grey, with a token IDAT: a bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def protobuf_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def protobuf_field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return protobuf_varint(number << 3 | 2) + protobuf_varint(len(payload)) + payload
