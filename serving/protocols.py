"""Request decoding for the two protocols the server speaks, into one float64 matrix.

* MLflow scoring protocol (``POST /invocations``): ``dataframe_split``, ``dataframe_records``,
  ``instances``, ``inputs`` as JSON, or CSV with a header row.
* Open Inference Protocol v2 (``POST /v2/models/{name}/infer``): one ``[rows, features]``
  tensor, or one ``[rows]`` tensor per feature named after it (MLServer's pandas codec).

Every check names what was wrong: the missing or unknown feature, the row and feature of a
value that is not a finite number, the limit that was exceeded.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

SMALL_ROWS = 4
MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
NUMERIC_DATATYPES = frozenset(
    {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
)


class RequestError(Exception):
    """A request the server will not score; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_json(body: bytes) -> Any:
    """Decode JSON; literals NaN/Infinity (as Python's json writes them) parse so the finiteness check can name them."""
    if not body.strip():
        raise RequestError(400, "empty request body: send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise RequestError(400, f"request body is not valid JSON: {error}") from error


def may_hold_booleans(body: bytes) -> bool:
    """JSON booleans are the literals true/false; a body without them needs no per-value bool scan."""
    return b"true" in body or b"false" in body


def mlflow_matrix(body: bytes, content_type: str, features: Sequence[str], max_rows: int) -> np.ndarray:
    """The matrix of an MLflow ``/invocations`` request."""
    if content_type.startswith("text/csv"):
        return _csv_matrix(body, features, max_rows)
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise RequestError(400, f"expected a JSON object with one of {', '.join(MLFLOW_FORMATS)}")
    formats = [key for key in MLFLOW_FORMATS if key in payload]
    if len(formats) != 1 or len(payload) - ("params" in payload) != 1:
        found = ", ".join(sorted(payload)) or "nothing"
        raise RequestError(
            400, f"expected exactly one of {', '.join(MLFLOW_FORMATS)} (and optionally params); got {found}"
        )
    key = formats[0]
    value = payload[key]
    bools = may_hold_booleans(body)
    if key == "dataframe_split":
        if not isinstance(value, dict) or "data" not in value:
            raise RequestError(400, "dataframe_split must be an object with 'data' (rows) and 'columns'")
        return rows_matrix(value["data"], value.get("columns"), features, max_rows, key, bools)
    if key == "dataframe_records":
        return records_matrix(value, features, max_rows, key, bools)
    if isinstance(value, dict):
        return columns_matrix(value, features, max_rows, key, bools)
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return records_matrix(value, features, max_rows, key, bools)
    return rows_matrix(value, None, features, max_rows, key, bools)


def records_matrix(records: Any, features: Sequence[str], max_rows: int, where: str, bools: bool) -> np.ndarray:
    """A list of ``{feature: value}`` objects."""
    if not isinstance(records, list) or not records:
        raise RequestError(400, f"{where} must be a non-empty list of records (objects of feature: value)")
    _check_rows(len(records), max_rows)
    try:
        rows = [[record[name] for name in features] for record in records]
    except (KeyError, TypeError):
        rows = []
    for number, record in enumerate(records):
        if not isinstance(record, dict):
            raise RequestError(400, f"{where} row {number} is {type(record).__name__}, expected an object")
        if len(record) != len(features) or not rows:
            _check_names(list(record), features, f"{where} row {number}")
    return rows_matrix(rows, None, features, max_rows, where, bools)


def columns_matrix(
    columns: dict[str, Any], features: Sequence[str], max_rows: int, where: str, bools: bool
) -> np.ndarray:
    """An object of ``feature: [values]`` columns."""
    _check_names(list(columns), features, where)
    lengths = {name: len(values) if isinstance(values, list) else -1 for name, values in columns.items()}
    if len(set(lengths.values())) != 1 or -1 in lengths.values():
        raise RequestError(400, f"{where} columns must be lists of equal length; got lengths {lengths}")
    _check_rows(next(iter(lengths.values())), max_rows)
    rows = [list(row) for row in zip(*(columns[name] for name in features), strict=True)]
    return rows_matrix(rows, None, features, max_rows, where, bools)


def rows_matrix(
    rows: Any, columns: Any, features: Sequence[str], max_rows: int, where: str, bools: bool = True
) -> np.ndarray:
    """A list of rows (optionally with their column names) as a float64 matrix in feature order."""
    if not isinstance(rows, list) or not rows:
        raise RequestError(400, f"{where} must hold a non-empty list of rows")
    _check_rows(len(rows), max_rows)
    if columns is None or columns == list(features):
        return numeric_array(rows, features, where, bools)
    if not isinstance(columns, list) or not all(isinstance(name, str) for name in columns):
        raise RequestError(400, f"{where} columns must be a list of feature names")
    _check_names(columns, features, where)
    return numeric_array(rows, columns, where, bools)[:, [columns.index(name) for name in features]]


def numeric_array(rows: list[Any], names: Sequence[str], where: str, bools: bool = True) -> np.ndarray:
    """Rows of plain numbers → float64; anything else (booleans, strings, nulls, ragged or nested rows,
    non-finite values) is refused with its position."""
    if len(rows) <= SMALL_ROWS:
        return _small_matrix(rows, names, where)
    array = _try_array(rows, bools)
    if array is None or array.ndim != 2 or array.shape[1] != len(names) or array.dtype.kind not in "iuf":
        raise _describe_bad_rows(rows, names, where)
    return _finite(array.astype(np.float64, copy=False), names, where)


def _small_matrix(rows: list[Any], names: Sequence[str], where: str) -> np.ndarray:
    """The one-row request that dominates online traffic: checking values in Python beats four numpy calls."""
    width = len(names)
    for row in rows:
        if type(row) is not list or len(row) != width:
            raise _describe_bad_rows(rows, names, where)
        for value in row:
            kind = type(value)
            if kind is not float and kind is not int:
                raise _describe_bad_rows(rows, names, where)
    try:
        matrix = np.array(rows, dtype=np.float64)
    except OverflowError as error:
        raise RequestError(400, f"{where}: a value does not fit a 64-bit float") from error
    return _finite(matrix, names, where)


def _try_array(values: list[Any], bools: bool) -> np.ndarray | None:
    if bools and _has_bool(values):
        return None
    try:
        return np.array(values)
    except ValueError:  # ragged or nested; the caller diagnoses
        return None


def _finite(matrix: np.ndarray, names: Sequence[str], where: str) -> np.ndarray:
    finite = np.isfinite(matrix)
    if not finite.all():
        row, column = (int(index) for index in np.argwhere(~finite)[0])
        raise RequestError(
            400, f"{where} row {row}, feature {names[column]!r}: value {matrix[row, column]} is not finite"
        )
    return matrix


def _describe_bad_rows(rows: list[Any], names: Sequence[str], where: str) -> RequestError:
    for number, row in enumerate(rows):
        if not isinstance(row, list):
            return RequestError(
                400, f"{where} row {number} is {json.dumps(row)}, expected a list of {len(names)} numbers"
            )
        if len(row) != len(names):
            return RequestError(
                400, f"{where} row {number}: expected {len(names)} values ({', '.join(names)}), got {len(row)}"
            )
        for column, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, int | float):
                return RequestError(
                    400, f"{where} row {number}, feature {names[column]!r}: expected a number, got {json.dumps(value)}"
                )
    return RequestError(400, f"{where}: values could not be read as a matrix of numbers")


def v2_matrix(body: bytes, features: Sequence[str], max_rows: int) -> tuple[np.ndarray, Any]:
    """The matrix of an Open Inference Protocol v2 infer request, and the request's ``id`` (if any)."""
    payload = parse_json(body)
    bools = may_hold_booleans(body)
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list) or not payload["inputs"]:
        raise RequestError(400, "expected a JSON object with a non-empty 'inputs' list of tensors")
    tensors = payload["inputs"]
    if not all(isinstance(tensor, dict) for tensor in tensors):
        raise RequestError(400, "each entry of 'inputs' must be an object with name, shape, datatype and data")
    if len(tensors) == 1 and tensors[0].get("name") not in features:
        tensor = tensors[0]
        name, shape = tensor.get("name"), _shape(tensor)
        if len(shape) != 2 or shape[1] != len(features):
            raise RequestError(
                400,
                f"input {name!r} has shape {shape}; expected [rows, {len(features)}] with features "
                f"{', '.join(features)} (or one [rows] tensor per feature, named after it)",
            )
        _check_rows(shape[0], max_rows)
        return _tensor_values(tensor, shape, features, bools), payload.get("id")
    columns: dict[str, Any] = {}
    for tensor in tensors:
        name, shape = tensor.get("name"), _shape(tensor)
        if not isinstance(name, str):
            raise RequestError(400, "every input tensor needs a string 'name'")
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise RequestError(400, f"input {name!r} has shape {shape}; a per-feature tensor is [rows] or [rows, 1]")
        _check_rows(shape[0], max_rows)
        columns[name] = _tensor_values(tensor, shape, [name], bools).reshape(-1)
    if len(columns) != len(tensors):
        raise RequestError(400, "input tensor names must be unique")
    _check_names(list(columns), features, "inputs")
    lengths = {len(values) for values in columns.values()}
    if len(lengths) != 1:
        raise RequestError(400, f"input tensors have different row counts: {sorted(lengths)}")
    return np.column_stack([columns[name] for name in features]), payload.get("id")


def _tensor_values(tensor: dict[str, Any], shape: list[int], names: Sequence[str], bools: bool) -> np.ndarray:
    name, datatype, data = tensor.get("name"), tensor.get("datatype"), tensor.get("data")
    if not isinstance(datatype, str) or datatype not in NUMERIC_DATATYPES:
        raise RequestError(
            400,
            f"input {name!r} has datatype {datatype!r}; this model takes numbers "
            f"({', '.join(sorted(NUMERIC_DATATYPES))})",
        )
    if not isinstance(data, list):
        raise RequestError(400, f"input {name!r} needs 'data' as a list (flat, row-major, or nested)")
    expected, width = math.prod(shape), shape[1] if len(shape) == 2 else 1
    array = _try_array(data, bools)
    if array is None or array.size != expected or array.dtype.kind not in "iuf":
        flat = _flatten(data)
        if len(flat) != expected:
            raise RequestError(400, f"input {name!r} has {len(flat)} values, but its shape {shape} needs {expected}")
        rows = [flat[start : start + width] for start in range(0, len(flat), width)]
        raise _describe_bad_rows(rows, names, f"input {name!r}")
    return _finite(array.reshape(shape[0], width).astype(np.float64, copy=False), names, f"input {name!r}")


def _shape(tensor: dict[str, Any]) -> list[int]:
    shape = tensor.get("shape")
    valid = isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)
    if not valid or not shape:
        raise RequestError(400, f"input {tensor.get('name')!r} needs 'shape' as a list of non-negative integers")
    if shape[0] == 0:
        raise RequestError(400, f"input {tensor.get('name')!r} has no rows")
    return shape


def _flatten(data: list[Any]) -> list[Any]:
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item) if isinstance(item, list) else [item])
    return flat


def _csv_matrix(body: bytes, features: Sequence[str], max_rows: int) -> np.ndarray:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestError(400, f"CSV body is not UTF-8: {error}") from error
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise RequestError(400, "CSV body needs a header row with the feature names")
    rows: list[list[Any]] = []
    for number, line in enumerate(reader):
        if len(rows) >= max_rows:
            raise RequestError(413, f"more than {max_rows} rows exceed the limit of {max_rows} rows per request")
        try:
            rows.append([float(cell) for cell in line])
        except ValueError as error:
            raise RequestError(400, f"CSV row {number}: {error}") from error
    return rows_matrix(rows, header, features, max_rows, "CSV")


def _check_names(names: list[str], features: Sequence[str], where: str) -> None:
    missing = [name for name in features if name not in names]
    unknown = [name for name in names if name not in features]
    if missing or unknown or len(names) != len(features):
        parts = []
        if missing:
            parts.append(f"missing feature(s) {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown feature(s) {', '.join(map(str, unknown))}")
        if not parts:
            parts.append("repeated feature names")
        raise RequestError(400, f"{where}: {'; '.join(parts)} (the model takes {', '.join(features)})")


def _check_rows(count: int, max_rows: int) -> None:
    if count > max_rows:
        raise RequestError(413, f"{count} rows exceed the limit of {max_rows} rows per request; split the batch")


def _has_bool(values: list[Any]) -> bool:
    return any(value is True or value is False or (isinstance(value, list) and _has_bool(value)) for value in values)
