"""Read the two facts the station needs from an ONNX file's bytes, without the `onnx` package.

The station install has onnxruntime but not onnx, and onnxruntime can only read metadata by
building a whole inference session. An ONNX file is a protobuf ``ModelProto``; this walks just the
fields named below (field numbers from onnx/onnx.proto3) and skips everything else by its length:

    ModelProto      graph 7 (GraphProto), metadata_props 14 (StringStringEntryProto), functions 25
    StringStringEntryProto   key 1, value 2
    GraphProto      node 1 (NodeProto), initializer 5 (TensorProto), sparse_initializer 15
    NodeProto       attribute 5 (AttributeProto)
    AttributeProto  t 5, g 6, tensors 10, graphs 11, sparse_tensor 22, sparse_tensors 23
    FunctionProto   node 7
    SparseTensorProto  values 1, indices 2 (TensorProto)
    TensorProto     name 8, external_data 13, data_location 14 (1 = EXTERNAL)
"""

from __future__ import annotations

from typing import Iterator

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


class ProtobufError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def metadata_props(data: bytes) -> dict[str, str]:
    """``ModelProto.metadata_props`` as a dict; a repeated key is refused (readers may keep either copy)."""
    props: dict[str, str] = {}
    for number, value in _fields(memoryview(data)):
        if number == 14 and isinstance(value, memoryview):
            entry = {n: bytes(v).decode("utf-8", errors="strict") for n, v in _fields(value)
                     if n in (1, 2) and isinstance(v, memoryview)}
            key = entry.get(1, "")
            if key in props:
                raise ProtobufError(f"metadata key {key!r} appears more than once")
            props[key] = entry.get(2, "")
    return props


def external_tensors(data: bytes) -> list[str]:
    """Names of the tensors whose data lives outside this file (in the graph, subgraphs or functions)."""
    found: list[str] = []
    for number, value in _fields(memoryview(data)):
        if number == 7 and isinstance(value, memoryview):
            _graph(value, found)
        elif number == 25 and isinstance(value, memoryview):
            _nodes((v for n, v in _fields(value) if n == 7), found)
    return found


def _graph(graph: memoryview, found: list[str]) -> None:
    fields = [(n, v) for n, v in _fields(graph) if isinstance(v, memoryview)]
    for number, value in fields:
        if number == 5:
            _tensor(value, found)
        elif number == 15:
            _sparse(value, found)
    _nodes((v for n, v in fields if n == 1), found)


def _nodes(nodes: Iterator[memoryview], found: list[str]) -> None:
    for node in nodes:
        for number, attribute in _fields(node):
            if number == 5 and isinstance(attribute, memoryview):
                _attribute(attribute, found)


def _attribute(attribute: memoryview, found: list[str]) -> None:
    for number, value in _fields(attribute):
        if not isinstance(value, memoryview):
            continue
        if number in (5, 10):
            _tensor(value, found)
        elif number in (6, 11):
            _graph(value, found)
        elif number in (22, 23):
            _sparse(value, found)


def _sparse(sparse: memoryview, found: list[str]) -> None:
    for number, value in _fields(sparse):
        if number in (1, 2) and isinstance(value, memoryview):
            _tensor(value, found)


def _tensor(tensor: memoryview, found: list[str]) -> None:
    name, external = "", False
    for number, value in _fields(tensor):
        if number == 8 and isinstance(value, memoryview):
            name = bytes(value).decode("utf-8", errors="replace")
        elif number == 13 or (number == 14 and value == _EXTERNAL):
            external = True
    if external:
        found.append(name or "(unnamed)")


def _fields(buf: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) for each field: an int for varint/fixed fields, a view for length-delimited ones."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire == _BYTES:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise ProtobufError("a field runs past the end of its message (truncated file?)")
            value, pos = buf[pos:pos + length], pos + length
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            if pos + size > end:
                raise ProtobufError("a fixed-size field runs past the end of its message")
            value, pos = int.from_bytes(buf[pos:pos + size], "little"), pos + size
        else:
            raise ProtobufError(f"unsupported protobuf wire type {wire} (field {number})")
        if number == 0:
            raise ProtobufError("field number 0")
        yield number, value


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ProtobufError("a varint runs past the end of its message")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
