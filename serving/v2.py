"""Open Inference Protocol v2 infer requests and answers (``POST /v2/models/{name}[/versions/{v}]/infer``).

Inputs: one ``[rows, features]`` tensor, or one ``[rows]`` tensor per feature named after it
(MLServer's pandas codec); their data as JSON ``data`` or as raw bytes (the binary tensor data
extension, :mod:`serving.binary`), any numeric datatype. Outputs: all of the model's, or those the
request lists in ``outputs`` (an unknown name is refused); as JSON ``data``, or as bytes where the
request asks (``parameters.binary_data_output``, or ``binary_data`` on a listed output).

Beside the features a request may send a tensor per row id column of the spec (``BYTES``, or numbers),
answered back as an output of the same name, datatype and values ``[rows, 1]``, and a tensor per ignored
column, dropped. :func:`model_metadata` declares what ``infer`` takes and answers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.asgi import Reply, dumps
from serving.binary import DTYPES, HEADER, BinaryInputs, encode_output, split_body
from serving.bundle import ModelMetadata
from serving.protocols import (
    MAX_DEPTH,
    NO_EXTRA,
    ExtraColumns,
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
from serving.typed import TypedSchema

NUMERIC_DATATYPES = frozenset(
    {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
)
OCTET_STREAM = b"application/octet-stream"
# A row id tensor as sent: its datatype and its values (echoed back as an output of the same name).
IdTensors = dict[str, tuple[str, list[Any]]]


@dataclass(frozen=True)
class V2Request:
    """A decoded infer request: the matrix in feature order (numeric models) or the raw values per column
    (typed models), the caller's id, how to answer, and the row id tensors it carried."""

    matrix: np.ndarray | None
    columns: dict[str, list[Any]] | None
    id: Any
    outputs: tuple[str, ...]  # the outputs to answer with, in the model's order, then the row ids echoed
    binary: frozenset[str]  # those to answer as bytes
    ids: IdTensors | None = None

    def id_values(self) -> dict[str, list[Any]] | None:
        """The row ids by column (what is collected), or None."""
        return {name: values for name, (_, values) in self.ids.items()} if self.ids else None


class _Beside:
    """A request's id and ignored-column tensors, decoded in their place among the inputs (binary data is read in
    input order): ids kept with their datatype, ignored columns dropped."""

    def __init__(self, extra: ExtraColumns, raw: BinaryInputs, max_rows: int) -> None:
        self.extra, self.raw, self.max_rows = extra, raw, max_rows
        self.ids: IdTensors = {}
        self.rows: dict[str, int] = {}

    def take(self, tensor: dict[str, Any]) -> bool:
        """Decode ``tensor`` if it is an id or ignored column (True), else leave it to the caller (False)."""
        name = tensor.get("name")
        if not isinstance(name, str) or name not in self.extra.accepted:
            return False
        shape = _shape(tensor)
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise RequestError(400, f"input {name!r} has shape {shape}; a per-column tensor is [rows] or [rows, 1]")
        check_rows(shape[0], self.max_rows)
        if name in self.rows:
            raise RequestError(400, "input tensor names must be unique")
        values = _raw_values(tensor, shape, self.raw)
        self.rows[name] = len(values)
        if name in self.extra.ids:
            datatype = str(tensor.get("datatype"))
            for row, value in enumerate(values):
                if not _is_datatype(value, datatype):
                    raise RequestError(400, f"input {name!r} (a row id), row {row}: {brief(value)} is not {datatype}")
            if datatype != "BYTES":
                try:  # answered in the datatype sent: the values must fit it
                    np.asarray(values, dtype=DTYPES[datatype])
                except (OverflowError, ValueError) as error:
                    raise RequestError(400, f"input {name!r} (a row id): values do not fit {datatype}") from error
            self.ids[name] = (datatype, values)
        return True

    def finish(self, rows: int) -> IdTensors | None:
        """The ids, checked to have the features' ``rows``, in the spec's order."""
        for name, count in self.rows.items():
            if count != rows:
                raise RequestError(400, f"input {name!r} has {count} rows, but the feature tensors have {rows}")
        return {name: self.ids[name] for name in self.extra.ids if name in self.ids} or None


def _named(tensor: dict[str, Any]) -> str:
    name = tensor.get("name")
    return name if isinstance(name, str) else ""


def _is_datatype(value: Any, datatype: str) -> bool:
    kind = type(value)
    if datatype == "BYTES":
        return kind is str
    if datatype == "BOOL":
        return kind is bool
    return kind is int or kind is float


def _beside(tensors: list[dict[str, Any]], extra: ExtraColumns, raw: BinaryInputs, max_rows: int) -> _Beside | None:
    """A decoder of the request's id and ignored tensors, or None when it sends none (the common case)."""
    accepted = extra.accepted
    if accepted:
        for tensor in tensors:
            name = tensor.get("name")
            if type(name) is str and name in accepted:
                return _Beside(extra, raw, max_rows)
    return None


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
    body: bytes,
    header_length: str | None,
    features: Sequence[str],
    outputs: Sequence[str],
    max_rows: int,
    extra: ExtraColumns = NO_EXTRA,
) -> V2Request:
    """Decode an infer request (JSON, or JSON + binary tensor data) for a model of ``features`` → ``outputs``
    (``extra``: the id and ignored columns it may also carry)."""
    payload, tensors, raw = _request(body, header_length)
    bools = may_hold_booleans(body)  # a binary part that happens to hold "true" only costs the slower check
    beside = _beside(tensors, extra, raw, max_rows)
    model = tensors if beside is None else [tensor for tensor in tensors if _named(tensor) not in extra.accepted]
    if len(model) == 1 and model[0].get("name") not in features:
        matrix = None
        for tensor in tensors:  # in input order: binary data is read in that order
            if beside is None or not beside.take(tensor):
                matrix = _matrix_tensor(tensor, features, max_rows, raw, bools)
        assert matrix is not None
    else:
        matrix = _column_tensors(tensors, features, max_rows, raw, bools, extra, beside)
    raw.finish()
    ids = None if beside is None else beside.finish(len(matrix))
    chosen, binary_outputs = _requested_outputs(payload, outputs, ids, extra.ids)
    return V2Request(matrix, None, payload.get("id"), chosen, binary_outputs, ids)


def parse_typed_infer(
    body: bytes,
    header_length: str | None,
    names: Sequence[str],
    outputs: Sequence[str],
    max_rows: int,
    extra: ExtraColumns = NO_EXTRA,
) -> V2Request:
    """Decode an infer request for a typed model: one tensor per column (``BYTES`` for text, numbers, nulls in
    JSON data where a column may be missing), or one ``[rows, columns]`` numeric tensor; values checked later
    by :class:`serving.typed.TypedSchema` (``extra``: the id and ignored columns it may also carry)."""
    payload, tensors, raw = _request(body, header_length)
    columns: dict[str, list[Any]] = {}
    beside = _beside(tensors, extra, raw, max_rows)
    model = tensors if beside is None else [tensor for tensor in tensors if _named(tensor) not in extra.accepted]
    if len(model) == 1 and model[0].get("name") not in names:
        for tensor in tensors:  # in input order: binary data is read in that order
            if beside is not None and beside.take(tensor):
                continue
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
            if beside is not None and beside.take(tensor):
                continue
            name, shape = tensor.get("name"), _shape(tensor)
            if not isinstance(name, str):
                raise RequestError(400, "every input tensor needs a string 'name'")
            if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
                raise RequestError(400, f"input {name!r} has shape {shape}; a per-column tensor is [rows] or [rows, 1]")
            check_rows(shape[0], max_rows)
            if name in columns:
                raise RequestError(400, "input tensor names must be unique")
            columns[name] = _raw_values(tensor, shape, raw)
        check_names(list(columns), names, "inputs", extra)
        lengths = {len(values) for values in columns.values()}
        if len(lengths) != 1:
            raise RequestError(400, f"input tensors have different row counts: {sorted(lengths)}")
    raw.finish()
    ids = None if beside is None else beside.finish(len(columns[names[0]]))
    chosen, binary_outputs = _requested_outputs(payload, outputs, ids, extra.ids)
    return V2Request(None, columns, payload.get("id"), chosen, binary_outputs, ids)


def _raw_values(tensor: dict[str, Any], shape: list[int], raw: BinaryInputs) -> list[Any]:
    name, datatype = tensor.get("name"), tensor.get("datatype")
    if not isinstance(datatype, str) or (
        datatype != "BYTES" and datatype != "BOOL" and datatype not in NUMERIC_DATATYPES
    ):
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
        sent: list[Any] | None = None
        if request.ids is not None and output in request.ids:
            datatype, sent = request.ids[output]  # a row id, echoed as sent
            column = np.asarray(sent, dtype=object if datatype == "BYTES" else DTYPES[datatype])
        else:
            column = values[output]
            datatype = _datatype(column)
        shape = [len(column), 1] if column.ndim == 1 else list(column.shape)
        tensor: dict[str, Any] = {"name": output, "datatype": datatype, "shape": shape}
        extra = dict((parameters or {}).get(output) or {})
        if output in request.binary:
            chunk = encode_output(column, datatype)
            extra["binary_data_size"] = len(chunk)
            chunks.append(chunk)
        elif sent is not None:
            tensor["data"] = sent
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
    tensors: list[dict[str, Any]],
    features: Sequence[str],
    max_rows: int,
    raw: BinaryInputs,
    bools: bool,
    extra: ExtraColumns = NO_EXTRA,
    beside: _Beside | None = None,
) -> np.ndarray:
    columns: dict[str, Any] = {}
    for tensor in tensors:
        if beside is not None and beside.take(tensor):
            continue
        name, shape = tensor.get("name"), _shape(tensor)
        if not isinstance(name, str):
            raise RequestError(400, "every input tensor needs a string 'name'")
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise RequestError(400, f"input {name!r} has shape {shape}; a per-feature tensor is [rows] or [rows, 1]")
        check_rows(shape[0], max_rows)
        columns[name] = _tensor_values(tensor, shape, [name], raw, bools).reshape(-1)
    if len(columns) != len(tensors) - (0 if beside is None else len(beside.rows)):
        raise RequestError(400, "input tensor names must be unique")
    check_names(list(columns), features, "inputs", extra)
    lengths = {len(values) for values in columns.values()}
    if len(lengths) != 1:
        raise RequestError(400, f"input tensors have different row counts: {sorted(lengths)}")
    return np.column_stack([columns[name] for name in features])


def _requested_outputs(
    payload: dict[str, Any], outputs: Sequence[str], ids: IdTensors | None = None, id_names: Sequence[str] = ()
) -> tuple[tuple[str, ...], frozenset[str]]:
    """The outputs to answer with (the model's, then the row ids the request sent) and those to answer as bytes."""
    parameters = payload.get("parameters")
    all_binary = isinstance(parameters, dict) and parameters.get("binary_data_output") is True
    listed = payload.get("outputs")
    echoed = tuple(ids or ())
    if listed is None:
        everything = (*outputs, *echoed)
        return everything, frozenset(everything if all_binary else ())
    if not isinstance(listed, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in listed):
        raise RequestError(400, "'outputs' must be a list of objects with a 'name'")
    names = [o["name"] for o in listed]
    unknown = [name for name in names if name not in outputs and name not in id_names]
    if unknown:
        ids_too = f" and the row id(s) {', '.join(id_names)} echoed from the inputs" if id_names else ""
        raise RequestError(400, f"unknown output(s) {', '.join(unknown)}; this model has {', '.join(outputs)}{ids_too}")
    unsent = [name for name in names if name in id_names and name not in echoed]
    if unsent:
        raise RequestError(
            400, f"output(s) {', '.join(unsent)} echo the input of that name, which this request does not send"
        )
    binary = {
        o["name"]
        for o in listed
        if all_binary or (isinstance(o.get("parameters"), dict) and o["parameters"].get("binary_data") is True)
    }
    return tuple(name for name in (*outputs, *echoed) if name in names), frozenset(binary)


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


# --- model metadata (GET /v2/models/{name}) -----------------------------------------------------


def output_metadata(name: str, answer: np.ndarray, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """An output as :func:`infer_reply` answers it (datatype and shape from a real answer of the model)."""
    shape = [-1, 1] if answer.ndim == 1 else [-1, *answer.shape[1:]]
    return {
        "name": name,
        "datatype": _datatype(answer),
        "shape": shape,
        **({"parameters": parameters} if parameters else {}),
    }


def model_metadata(
    meta: ModelMetadata,
    schema: TypedSchema | None,
    answers: dict[str, np.ndarray],
    parameters: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """What ``infer`` takes and answers: a model on one float64 matrix declares it (``parameters.columns``: their
    order), any other one tensor per column, named after it (``BYTES`` for categories, ``BOOL`` for flags,
    ``FP64`` for numbers; ``parameters``: kind, nullable and the text a missing category is sent as in binary
    data); every output with its datatype and shape (``answers``: the model's to a real request) and
    ``parameters`` (class names); each row id column as an optional input and the output that echoes it."""
    columns = [] if schema is None else schema.columns
    if schema is None or schema.matrix_input is not None:
        names = list(meta.features) if schema is None else schema.names
        nullable = [column.name for column in columns if column.nullable]
        inputs = [
            {
                "name": meta.input_name,
                "datatype": "FP64",
                "shape": [-1, len(names)],
                "parameters": {"columns": names, **({"nullable": nullable} if nullable else {})},
            }
        ]
    else:
        inputs = [
            {
                "name": column.name,
                "datatype": "BYTES" if column.type == "string" else "BOOL" if column.kind == "boolean" else "FP64",
                "shape": [-1],
                "parameters": {
                    "kind": column.kind,
                    "nullable": column.nullable,
                    **({"missing": column.fill} if column.nullable and column.type == "string" else {}),
                },
            }
            for column in columns
        ]
    echoed = {"row_id": True, "optional": True}
    inputs += [{"name": name, "datatype": "BYTES", "shape": [-1], "parameters": echoed} for name in meta.ids]
    outputs = [output_metadata(name, answers[name], parameters.get(name)) for name in answers]
    outputs += [{"name": name, "datatype": "BYTES", "shape": [-1, 1], "parameters": echoed} for name in meta.ids]
    return {
        "name": meta.name,
        "versions": [meta.version],
        "platform": "onnxruntime_onnx",
        "inputs": inputs,
        "outputs": outputs,
        "parameters": {
            "task": meta.task,
            "features": list(meta.features) if schema is None else schema.names,
            "ids": list(meta.ids),
            "ignore": list(meta.ignore),
            "sha256": meta.sha256,
            "run_id": meta.run_id,
        },
    }
