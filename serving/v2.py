"""Open Inference Protocol v2 infer requests and answers (``POST /v2/models/{name}[/versions/{v}]/infer``).

Inputs: one ``[rows, features]`` tensor, or one ``[rows]`` tensor per feature named after it
(MLServer's pandas codec); their data as JSON ``data`` or as raw bytes (the binary tensor data
extension, :mod:`serving.binary`), any numeric datatype. Outputs: all of the model's, or those the
request lists in ``outputs`` (an unknown name is refused); as JSON ``data``, or as bytes where the
request asks (``parameters.binary_data_output``, or ``binary_data`` on a listed output).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.asgi import Reply, dumps
from serving.binary import HEADER, BinaryInputs, encode_output, split_body
from serving.protocols import (
    MAX_DEPTH,
    RequestError,
    brief,
    check_names,
    check_rows,
    describe_bad_rows,
    finite,
    may_hold_booleans,
    parse_json,
    too_deep,
    try_array,
)

NUMERIC_DATATYPES = frozenset(
    {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
)
OCTET_STREAM = b"application/octet-stream"


@dataclass(frozen=True)
class V2Request:
    """A decoded infer request: the matrix in feature order (numeric models) or the raw values per column
    (typed models), the caller's id, and how to answer."""

    matrix: np.ndarray | None
    columns: dict[str, list[Any]] | None
    id: Any
    outputs: tuple[str, ...]  # the outputs to answer with, in the model's order
    binary: frozenset[str]  # those to answer as bytes


def _request(body: bytes, header_length: str | None) -> tuple[dict[str, Any], list[dict[str, Any]], BinaryInputs]:
    """The request's JSON object, its input tensors, and the reader of their binary data."""
    text, binary = split_body(body, header_length)
    payload = parse_json(text)
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list) or not payload["inputs"]:
        raise RequestError(400, "expected a JSON object with a non-empty 'inputs' list of tensors")
    tensors = payload["inputs"]
    if not all(isinstance(tensor, dict) for tensor in tensors):
        raise RequestError(400, "each entry of 'inputs' must be an object with name, shape, datatype and data")
    if "id" in payload and not isinstance(payload["id"], str):
        raise RequestError(400, f"'id' must be a string, got {brief(payload['id'])}")
    return payload, tensors, BinaryInputs(binary)


def parse_infer(
    body: bytes, header_length: str | None, features: Sequence[str], outputs: Sequence[str], max_rows: int
) -> V2Request:
    """Decode an infer request (JSON, or JSON + binary tensor data) for a model of ``features`` → ``outputs``."""
    payload, tensors, raw = _request(body, header_length)
    bools = may_hold_booleans(body)  # a binary part that happens to hold "true" only costs the slower check
    if len(tensors) == 1 and tensors[0].get("name") not in features:
        matrix = _matrix_tensor(tensors[0], features, max_rows, raw, bools)
    else:
        matrix = _column_tensors(tensors, features, max_rows, raw, bools)
    raw.finish()
    chosen, binary_outputs = _requested_outputs(payload, outputs)
    return V2Request(matrix, None, payload.get("id"), chosen, binary_outputs)


def parse_typed_infer(
    body: bytes, header_length: str | None, names: Sequence[str], outputs: Sequence[str], max_rows: int
) -> V2Request:
    """Decode an infer request for a typed model: one tensor per column (``BYTES`` for text, numbers, nulls in
    JSON data where a column may be missing), or one ``[rows, columns]`` numeric tensor; values checked later
    by :class:`serving.typed.TypedSchema`."""
    payload, tensors, raw = _request(body, header_length)
    columns: dict[str, list[Any]] = {}
    if len(tensors) == 1 and tensors[0].get("name") not in names:
        tensor = tensors[0]
        shape = _shape(tensor)
        if len(shape) != 2 or shape[1] != len(names):
            raise RequestError(
                400,
                f"input {tensor.get('name')!r} has shape {shape}; expected one tensor per column "
                f"({', '.join(names)}) or one [rows, {len(names)}] tensor",
            )
        check_rows(shape[0], max_rows)
        flat = _raw_values(tensor, shape, raw)
        columns = {name: flat[index :: len(names)] for index, name in enumerate(names)}
    else:
        for tensor in tensors:
            name, shape = tensor.get("name"), _shape(tensor)
            if not isinstance(name, str):
                raise RequestError(400, "every input tensor needs a string 'name'")
            if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
                raise RequestError(400, f"input {name!r} has shape {shape}; a per-column tensor is [rows] or [rows, 1]")
            check_rows(shape[0], max_rows)
            if name in columns:
                raise RequestError(400, "input tensor names must be unique")
            columns[name] = _raw_values(tensor, shape, raw)
        check_names(list(columns), names, "inputs")
        lengths = {len(values) for values in columns.values()}
        if len(lengths) != 1:
            raise RequestError(400, f"input tensors have different row counts: {sorted(lengths)}")
    raw.finish()
    chosen, binary_outputs = _requested_outputs(payload, outputs)
    return V2Request(None, columns, payload.get("id"), chosen, binary_outputs)


def _raw_values(tensor: dict[str, Any], shape: list[int], raw: BinaryInputs) -> list[Any]:
    name, datatype = tensor.get("name"), tensor.get("datatype")
    if datatype != "BYTES" and datatype != "BOOL" and datatype not in NUMERIC_DATATYPES:
        raise RequestError(400, f"input {name!r} has datatype {datatype!r}; use BYTES for text, BOOL, or a number type")
    expected = math.prod(shape)
    carried = raw.take(tensor, shape, as_list=True)
    if carried is not None:
        if datatype != "BYTES":
            return list(carried)  # Python numbers already (as_list): a cheap copy
        try:
            return [element.decode("utf-8") for element in carried]
        except UnicodeDecodeError as error:
            raise RequestError(400, f"input {name!r}: a BYTES element is not UTF-8 text: {error}") from error
    data = tensor.get("data")
    if not isinstance(data, list):
        raise RequestError(
            400, f"input {name!r} needs 'data' as a list (flat, row-major, or nested) or parameters.binary_data_size"
        )
    flat = _flatten(data)
    if len(flat) != expected:
        raise RequestError(400, f"input {name!r} has {len(flat)} values, but its shape {shape} needs {expected}")
    return flat


def _datatype(values: np.ndarray) -> str:
    kind = values.dtype.kind
    return "FP64" if kind == "f" else "INT64" if kind in "iu" else "BOOL" if kind == "b" else "BYTES"


def infer_reply(
    request: V2Request,
    name: str,
    version: str,
    request_id: str,
    values: dict[str, np.ndarray],
    parameters: dict[str, dict[str, Any]] | None = None,
) -> Reply:
    """The answer to ``request``: each requested output (``values`` by output name; numbers as FP64 or INT64,
    text as BYTES; a 1-D output is ``[rows, 1]``), JSON or bytes, with its ``parameters`` (e.g. class names)."""
    tensors, chunks = [], []
    for output in request.outputs:
        column = values[output]
        datatype = _datatype(column)
        shape = [len(column), 1] if column.ndim == 1 else list(column.shape)
        tensor: dict[str, Any] = {"name": output, "datatype": datatype, "shape": shape}
        extra = dict((parameters or {}).get(output) or {})
        if output in request.binary:
            chunk = encode_output(column, datatype)
            extra["binary_data_size"] = len(chunk)
            chunks.append(chunk)
        else:
            tensor["data"] = column.reshape(-1).tolist() if datatype == "BYTES" else column.reshape(-1)
        if extra:
            tensor["parameters"] = extra
        tensors.append(tensor)
    answer = dumps(
        {
            "model_name": name,
            "model_version": version,
            "id": str(request.id) if request.id is not None else request_id,
            "outputs": tensors,
        }
    )
    if not chunks:
        return Reply(200, answer)
    return Reply(200, answer + b"".join(chunks), OCTET_STREAM, ((HEADER, str(len(answer)).encode()),))


def _matrix_tensor(
    tensor: dict[str, Any], features: Sequence[str], max_rows: int, raw: BinaryInputs, bools: bool
) -> np.ndarray:
    name, shape = tensor.get("name"), _shape(tensor)
    if len(shape) != 2 or shape[1] != len(features):
        raise RequestError(
            400,
            f"input {name!r} has shape {shape}; expected [rows, {len(features)}] with features "
            f"{', '.join(features)} (or one [rows] tensor per feature, named after it)",
        )
    check_rows(shape[0], max_rows)
    return _tensor_values(tensor, shape, features, raw, bools)


def _column_tensors(
    tensors: list[dict[str, Any]], features: Sequence[str], max_rows: int, raw: BinaryInputs, bools: bool
) -> np.ndarray:
    columns: dict[str, Any] = {}
    for tensor in tensors:
        name, shape = tensor.get("name"), _shape(tensor)
        if not isinstance(name, str):
            raise RequestError(400, "every input tensor needs a string 'name'")
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise RequestError(400, f"input {name!r} has shape {shape}; a per-feature tensor is [rows] or [rows, 1]")
        check_rows(shape[0], max_rows)
        columns[name] = _tensor_values(tensor, shape, [name], raw, bools).reshape(-1)
    if len(columns) != len(tensors):
        raise RequestError(400, "input tensor names must be unique")
    check_names(list(columns), features, "inputs")
    lengths = {len(values) for values in columns.values()}
    if len(lengths) != 1:
        raise RequestError(400, f"input tensors have different row counts: {sorted(lengths)}")
    return np.column_stack([columns[name] for name in features])


def _requested_outputs(payload: dict[str, Any], outputs: Sequence[str]) -> tuple[tuple[str, ...], frozenset[str]]:
    parameters = payload.get("parameters")
    all_binary = isinstance(parameters, dict) and parameters.get("binary_data_output") is True
    listed = payload.get("outputs")
    if listed is None:
        return tuple(outputs), frozenset(outputs if all_binary else ())
    if not isinstance(listed, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in listed):
        raise RequestError(400, "'outputs' must be a list of objects with a 'name'")
    names = [o["name"] for o in listed]
    unknown = [name for name in names if name not in outputs]
    if unknown:
        raise RequestError(400, f"unknown output(s) {', '.join(unknown)}; this model has {', '.join(outputs)}")
    binary = {
        o["name"]
        for o in listed
        if all_binary or (isinstance(o.get("parameters"), dict) and o["parameters"].get("binary_data") is True)
    }
    return tuple(name for name in outputs if name in names), frozenset(binary)


def _tensor_values(
    tensor: dict[str, Any], shape: list[int], names: Sequence[str], raw: BinaryInputs, bools: bool
) -> np.ndarray:
    name, datatype = tensor.get("name"), tensor.get("datatype")
    if not isinstance(datatype, str) or datatype not in NUMERIC_DATATYPES:
        raise RequestError(
            400,
            f"input {name!r} has datatype {datatype!r}; this model takes numbers "
            f"({', '.join(sorted(NUMERIC_DATATYPES))})",
        )
    expected, width = math.prod(shape), shape[1] if len(shape) == 2 else 1
    carried = raw.take(tensor, shape)
    if isinstance(carried, np.ndarray):
        matrix = carried.reshape(shape[0], width).astype(np.float64)
        return finite(matrix, names, f"input {name!r}")
    data = tensor.get("data")
    if not isinstance(data, list):
        raise RequestError(
            400, f"input {name!r} needs 'data' as a list (flat, row-major, or nested) or parameters.binary_data_size"
        )
    array = try_array(data, bools)
    if array is None or array.size != expected or array.dtype.kind not in "iuf":
        flat = _flatten(data)
        if len(flat) != expected:
            raise RequestError(400, f"input {name!r} has {len(flat)} values, but its shape {shape} needs {expected}")
        rows = [flat[start : start + width] for start in range(0, len(flat), width)]
        raise describe_bad_rows(rows, names, f"input {name!r}")
    return finite(array.reshape(shape[0], width).astype(np.float64, copy=False), names, f"input {name!r}")


def _shape(tensor: dict[str, Any]) -> list[int]:
    shape = tensor.get("shape")
    valid = isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)
    if not valid or not shape:
        raise RequestError(400, f"input {tensor.get('name')!r} needs 'shape' as a list of non-negative integers")
    if shape[0] == 0:
        raise RequestError(400, f"input {tensor.get('name')!r} has no rows")
    return shape


def _flatten(data: list[Any]) -> list[Any]:
    """Nested ``data`` in row-major order (no recursion: the depth is bounded by ``MAX_DEPTH``)."""
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list[Any] = []
    pending: list[tuple[Iterator[Any], int]] = [(iter(data), 1)]
    while pending:
        items, depth = pending[-1]
        for item in items:
            if isinstance(item, list):
                if depth >= MAX_DEPTH:
                    raise too_deep("a tensor's data")
                pending.append((iter(item), depth + 1))
                break
            flat.append(item)
        else:
            pending.pop()
    return flat
