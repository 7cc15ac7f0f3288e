"""The Open Inference Protocol's binary tensor data extension (as Triton and KServe speak it).

A request may carry tensor data as raw bytes after its JSON: the ``Inference-Header-Content-Length``
header gives the JSON's length, and each input with ``parameters.binary_data_size`` takes that
many bytes, in input order (little-endian, row-major; ``BYTES`` elements each prefixed with a
4-byte little-endian length). An answer carries outputs as bytes when the request asks for it
(``parameters.binary_data_output``, or ``binary_data`` on a requested output): the outputs then
name their ``binary_data_size`` and the answer's ``Inference-Header-Content-Length`` header
gives the length of its JSON part.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from serving.protocols import RequestError

HEADER = b"inference-header-content-length"
EXTENSION = "binary_tensor_data"
DTYPES = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
STRUCT_CODES = {"BOOL": "?", "UINT8": "B", "UINT16": "H", "UINT32": "I", "UINT64": "Q", "INT8": "b", "INT16": "h"}
STRUCT_CODES |= {"INT32": "i", "INT64": "q", "FP16": "e", "FP32": "f", "FP64": "d"}


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON part and the binary part of a request body (all JSON when there is no header)."""
    if header_length is None:
        return body, b""
    if not header_length.strip().isdigit():
        raise RequestError(400, f"Inference-Header-Content-Length must be a byte count, got {header_length!r}")
    length = int(header_length)
    if length > len(body):
        raise RequestError(400, f"Inference-Header-Content-Length is {length} but the body has only {len(body)} bytes")
    return body[:length], body[length:]


class BinaryInputs:
    """Hands each binary input its bytes, in order, and checks none are left over."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.offset = 0

    def take(self, tensor: dict[str, Any], shape: list[int], as_list: bool = False) -> np.ndarray | list[Any] | None:
        """The tensor's values from the binary part (flat: an array, or with ``as_list`` Python numbers — struct
        unpacks a few values several times faster than an array and its ``tolist``), or None if it carries JSON
        ``data``; ``BYTES`` elements are always a list of bytes."""
        parameters = tensor.get("parameters")
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is None:
            return None
        name, datatype = tensor.get("name"), tensor.get("datatype")
        if type(size) is not int or size < 0:
            raise RequestError(400, f"input {name!r}: binary_data_size must be a non-negative integer")
        if self.offset + size > len(self.data):
            raise RequestError(
                400,
                f"input {name!r} declares {size} bytes of binary data, but only {len(self.data) - self.offset} remain",
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        count = math.prod(shape)
        if datatype == "BYTES":
            return _bytes_elements(bytes(chunk), count, name)
        dtype = DTYPES.get(datatype) if isinstance(datatype, str) else None
        if dtype is None:
            raise RequestError(400, f"input {name!r} has datatype {datatype!r}; known: BYTES, {', '.join(DTYPES)}")
        if size != count * dtype.itemsize:
            raise RequestError(
                400,
                f"input {name!r}: shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, got {size}",
            )
        if as_list:
            return list(struct.unpack_from(f"<{count}{STRUCT_CODES[str(datatype)]}", chunk))
        return np.frombuffer(chunk, dtype=dtype)

    def finish(self) -> None:
        left = len(self.data) - self.offset
        if left:
            raise RequestError(400, f"{left} bytes of binary data after the last binary input belong to no input")


def _bytes_elements(chunk: bytes, count: int, name: Any) -> list[bytes]:
    elements: list[bytes] = []
    offset = 0
    while offset < len(chunk):
        if offset + 4 > len(chunk):
            raise RequestError(400, f"input {name!r}: BYTES data ends inside an element's length prefix")
        (length,) = struct.unpack_from("<I", chunk, offset)
        offset += 4
        if offset + length > len(chunk):
            raise RequestError(400, f"input {name!r}: a BYTES element of {length} bytes runs past the data")
        elements.append(chunk[offset : offset + length])
        offset += length
    if len(elements) != count:
        raise RequestError(400, f"input {name!r}: its shape needs {count} BYTES elements, got {len(elements)}")
    return elements


def encode_output(values: np.ndarray, datatype: str) -> bytes:
    """An output's values as the extension's raw bytes (``BYTES``: each element's UTF-8, length-prefixed)."""
    if datatype == "BYTES":
        encoded = [str(value).encode("utf-8") for value in values.reshape(-1).tolist()]
        return b"".join(struct.pack("<I", len(element)) + element for element in encoded)
    return np.ascontiguousarray(values, dtype=DTYPES[datatype]).tobytes()
