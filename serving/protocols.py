"""Request decoding into one float64 matrix: MLflow's scoring protocol, and the checks both protocols share.

* MLflow scoring protocol (``POST /invocations``): ``dataframe_split``, ``dataframe_records``,
  ``instances``, ``inputs`` as JSON, or CSV with a header row.
* The Open Inference Protocol v2 is decoded in :mod:`serving.v2` with the same checks.

Every check names what was wrong: the missing or unknown feature, the row and feature of a
value that is not a finite number, the limit that was exceeded.

Besides its features a request may carry the spec's row id columns and ignored columns
(:class:`ExtraColumns`): ids are taken out of the rows, never fed to the model, and answered
beside the predictions; ignored columns are dropped. Any other column is refused.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

SMALL_ROWS = 4
MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
# Arrays and objects a request may nest (orjson itself stops at 1024). A request needs 4 at most: body,
# rows, row, and a v2 tensor's [rows, columns] data; deeper is an attack or a mistake, never a model input.
MAX_DEPTH = 32


# A request's row ids: id column -> one value per row, as the client sent them.
Ids = dict[str, list[Any]]


@dataclass(frozen=True)
class ExtraColumns:
    """The columns a request may carry beside the features: the spec's row ``ids`` (answered beside each
    prediction and collected, never fed to the model) and its ``ignore`` columns (dropped)."""

    ids: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    accepted: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "accepted", frozenset(self.ids) | frozenset(self.ignore))

    def describe(self) -> str:
        """What a row may carry besides the features, for an error message ('' when nothing)."""
        parts = [
            f"{', '.join(names)} ({role})" for names, role in ((self.ids, "ids"), (self.ignore, "ignored")) if names
        ]
        return f"; a row may also carry {' and '.join(parts)}" if parts else ""


NO_EXTRA = ExtraColumns()


class RequestError(Exception):
    """A request the server will not score; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# The answer to a request the model cannot answer with finite numbers (inputs that overflow it, such as 1e308):
# never a null in a 200, never collected. Rollout analysis counts it with the 5xx, against the canary only beyond
# the rate stable answers with (such inputs fail on every deployment).
NOT_FINITE_STATUS = 422


def not_finite_answer(row: int) -> RequestError:
    return RequestError(
        NOT_FINITE_STATUS,
        f"the model's answer for row {row} is not a finite number (an input far outside the range it was trained "
        "on?); nothing of this request was collected",
    )


def finite_rows(outputs: Any) -> np.ndarray | None:
    """Which rows of a model's outputs (an array, or output name → array) hold only finite numbers; None when all
    do (the common case: one check per output). Labels (text) are not numbers and always pass."""
    numeric = [v for v in (outputs.values() if isinstance(outputs, dict) else (outputs,)) if v.dtype.kind == "f"]
    if all(np.isfinite(values).all() for values in numeric):
        return None
    rows = len(numeric[0])
    return np.logical_and.reduce([np.isfinite(values.reshape(rows, -1)).all(axis=1) for values in numeric])


def first_not_finite(outputs: Any) -> int | None:
    """The first row of a model's outputs with a non-finite number, or None."""
    finite = finite_rows(outputs)
    return None if finite is None else int(np.argmin(finite))


def too_deep(where: str = "request body") -> RequestError:
    return RequestError(400, f"{where} nests arrays or objects deeper than {MAX_DEPTH} levels; send rows of values")


def parse_json(body: bytes) -> Any:
    """Decode JSON; literals NaN/Infinity (as Python's json writes them) parse so the finiteness check can name them.

    Raises:
        RequestError: Not JSON, or nested deeper than ``MAX_DEPTH`` (checked before any parser recurses).
    """
    if not body.strip():
        raise RequestError(400, "empty request body: send a JSON object")
    if _nesting_may_exceed(body):
        check_depth(body)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        if "depth limit" in str(error):  # orjson's own bound (1024): the scan's first pass was fooled by text
            raise too_deep() from None
    try:
        return json.loads(body)
    except RecursionError:
        raise too_deep() from None
    except (ValueError, UnicodeDecodeError) as error:
        raise RequestError(400, f"request body is not valid JSON: {error}") from error


def _nesting_may_exceed(body: bytes) -> bool:
    """False when the body has too few brackets to nest ``MAX_DEPTH`` deep (every one-row request): no scan needed."""
    return body.count(b"[") + body.count(b"{") > MAX_DEPTH


def check_depth(body: bytes) -> None:
    """Raise when the JSON text nests arrays or objects deeper than ``MAX_DEPTH``, before any parser recurses.

    The depth is the running sum of opening minus closing brackets. Counted over every byte first
    (one cheap pass); only when that exceeds the limit are brackets inside strings left out (a quote
    toggles "inside a string" unless an odd run of backslashes escapes it), so a text value with
    brackets in it is never refused for them.
    """
    data = np.frombuffer(body, dtype=np.uint8)
    step = (data == 91).view(np.int8) + (data == 123).view(np.int8)  # [ {
    step -= (data == 93).view(np.int8) + (data == 125).view(np.int8)  # ] }
    if int(np.cumsum(step, dtype=np.int64).max(initial=0)) <= MAX_DEPTH:
        return
    backslash = data == 92
    counted = np.cumsum(backslash, dtype=np.int64)
    run = counted - np.maximum.accumulate(np.where(backslash, 0, counted))  # backslashes ending at each byte
    quotes = data == 34
    quotes[1:] &= run[:-1] % 2 == 0
    inside = np.cumsum(quotes, dtype=np.int64) % 2 == 1
    if int(np.cumsum(np.where(inside, 0, step), dtype=np.int64).max(initial=0)) > MAX_DEPTH:
        raise too_deep()


def may_hold_booleans(body: bytes) -> bool:
    """JSON booleans are the literals true/false; a body without them needs no per-value bool scan."""
    return b"true" in body or b"false" in body


def mlflow_payload(body: bytes) -> tuple[str, Any, dict[str, Any]]:
    """An ``/invocations`` JSON body's format (one of ``MLFLOW_FORMATS``), its value, and its ``params``."""
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise RequestError(400, f"expected a JSON object with one of {', '.join(MLFLOW_FORMATS)}")
    formats = [key for key in MLFLOW_FORMATS if key in payload]
    if len(formats) != 1 or len(payload) - ("params" in payload) != 1:
        found = ", ".join(sorted(payload)) or "nothing"
        raise RequestError(
            400, f"expected exactly one of {', '.join(MLFLOW_FORMATS)} (and optionally params); got {found}"
        )
    params = payload.get("params") or {}
    if not isinstance(params, dict):
        raise RequestError(400, "params must be an object")
    return formats[0], payload[formats[0]], params


def mlflow_matrix(
    body: bytes, content_type: str, features: Sequence[str], max_rows: int, extra: ExtraColumns = NO_EXTRA
) -> tuple[np.ndarray, Ids | None]:
    """The matrix of an MLflow ``/invocations`` request, and the row ids it carried (None when none)."""
    if content_type.startswith("text/csv"):
        return _csv_matrix(body, features, max_rows, extra)
    key, value, _ = mlflow_payload(body)
    bools = may_hold_booleans(body)
    if key == "dataframe_split":
        if not isinstance(value, dict) or "data" not in value:
            raise RequestError(400, "dataframe_split must be an object with 'data' (rows) and 'columns'")
        return rows_matrix(value["data"], value.get("columns"), features, max_rows, key, bools, extra)
    if key == "dataframe_records":
        return records_matrix(value, features, max_rows, key, bools, extra)
    if isinstance(value, dict):
        return columns_matrix(value, features, max_rows, key, bools, extra)
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return records_matrix(value, features, max_rows, key, bools, extra)
    return rows_matrix(value, None, features, max_rows, key, bools)


def records_matrix(
    records: Any, features: Sequence[str], max_rows: int, where: str, bools: bool, extra: ExtraColumns = NO_EXTRA
) -> tuple[np.ndarray, Ids | None]:
    """A list of ``{feature: value}`` objects (and the row ids among them)."""
    if not isinstance(records, list) or not records:
        raise RequestError(400, f"{where} must be a non-empty list of records (objects of feature: value)")
    check_rows(len(records), max_rows)
    try:
        rows = [[record[name] for name in features] for record in records]
    except (KeyError, TypeError):
        rows = []
    beside = False
    for number, record in enumerate(records):
        if not isinstance(record, dict):
            raise RequestError(400, f"{where} row {number} is {type(record).__name__}, expected an object")
        if len(record) != len(features) or not rows:
            beside |= bool(check_names(list(record), features, f"{where} row {number}", extra))
    ids = record_ids(records, extra, where) if beside else None
    return rows_matrix(rows, None, features, max_rows, where, bools)[0], ids


def columns_matrix(
    columns: dict[str, Any],
    features: Sequence[str],
    max_rows: int,
    where: str,
    bools: bool,
    extra: ExtraColumns = NO_EXTRA,
) -> tuple[np.ndarray, Ids | None]:
    """An object of ``feature: [values]`` columns (and the row ids among them)."""
    check_names(list(columns), features, where, extra)
    lengths = {name: len(values) if isinstance(values, list) else -1 for name, values in columns.items()}
    if len(set(lengths.values())) != 1 or -1 in lengths.values():
        raise RequestError(400, f"{where} columns must be lists of equal length; got lengths {lengths}")
    check_rows(next(iter(lengths.values())), max_rows)
    rows = [list(row) for row in zip(*(columns[name] for name in features), strict=True)]
    ids = checked_ids({name: columns[name] for name in extra.ids if name in columns}, where)
    return rows_matrix(rows, None, features, max_rows, where, bools)[0], ids


def rows_matrix(
    rows: Any,
    columns: Any,
    features: Sequence[str],
    max_rows: int,
    where: str,
    bools: bool = True,
    extra: ExtraColumns = NO_EXTRA,
) -> tuple[np.ndarray, Ids | None]:
    """A list of rows (optionally with their column names) as a float64 matrix in feature order, and the row ids
    among the columns (None when none)."""
    if not isinstance(rows, list) or not rows:
        raise RequestError(400, f"{where} must hold a non-empty list of rows")
    check_rows(len(rows), max_rows)
    if columns is None or columns == list(features):
        return numeric_array(rows, features, where, bools), None
    if not isinstance(columns, list) or not all(isinstance(name, str) for name in columns):
        raise RequestError(400, f"{where} columns must be a list of feature names")
    ids = None
    if check_names(columns, features, where, extra):
        rows, columns, ids = split_extra(rows, columns, extra, where)
    return numeric_array(rows, columns, where, bools)[:, [columns.index(name) for name in features]], ids


def split_extra(
    rows: list[Any], columns: list[str], extra: ExtraColumns, where: str
) -> tuple[list[list[Any]], list[str], Ids | None]:
    """Rows without their id and ignored columns, the names of the columns left, and the ids by column."""
    for number, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(columns):
            raise RequestError(
                400, f"{where} row {number}: expected a list of {len(columns)} values ({', '.join(columns)})"
            )
    keep = [index for index, name in enumerate(columns) if name not in extra.accepted]
    position = {name: index for index, name in enumerate(columns)}
    ids = {name: [row[position[name]] for row in rows] for name in extra.ids if name in position}
    return [[row[index] for index in keep] for row in rows], [columns[index] for index in keep], checked_ids(ids, where)


def record_ids(records: list[dict[str, Any]], extra: ExtraColumns, where: str) -> Ids | None:
    """The id columns any of ``records`` carries, a value per record (null where one lacks it)."""
    sent = [name for name in extra.ids if any(name in record for record in records)]
    return checked_ids({name: [record.get(name) for record in records] for name in sent}, where)


def checked_ids(ids: Ids, where: str) -> Ids | None:
    """``ids`` when every value is text, a number or null (None when there are none)."""
    for name, values in ids.items():
        for number, value in enumerate(values):
            if isinstance(value, list | dict):
                raise RequestError(
                    400, f"{where} row {number}, id {name!r}: expected text or a number, got {brief(value)}"
                )
    return ids or None


def numeric_array(rows: list[Any], names: Sequence[str], where: str, bools: bool = True) -> np.ndarray:
    """Rows of plain numbers → float64; anything else (booleans, strings, nulls, ragged or nested rows,
    non-finite values) is refused with its position."""
    if len(rows) <= SMALL_ROWS:
        return _small_matrix(rows, names, where)
    array = try_array(rows, bools)
    if array is None or array.ndim != 2 or array.shape[1] != len(names) or array.dtype.kind not in "iuf":
        raise describe_bad_rows(rows, names, where)
    return finite(array.astype(np.float64, copy=False), names, where)


def _small_matrix(rows: list[Any], names: Sequence[str], where: str) -> np.ndarray:
    """The one-row request that dominates online traffic: checking values in Python beats four numpy calls."""
    width = len(names)
    for row in rows:
        if type(row) is not list or len(row) != width:
            raise describe_bad_rows(rows, names, where)
        for value in row:
            kind = type(value)
            if kind is not float and kind is not int:
                raise describe_bad_rows(rows, names, where)
    try:
        matrix = np.array(rows, dtype=np.float64)
    except OverflowError as error:
        raise RequestError(400, f"{where}: a value does not fit a 64-bit float") from error
    return finite(matrix, names, where)


def try_array(values: list[Any], bools: bool) -> np.ndarray | None:
    if bools and _has_bool(values):
        return None
    try:
        return np.array(values)
    except ValueError:  # ragged or nested; the caller diagnoses
        return None


def finite(matrix: np.ndarray, names: Sequence[str], where: str) -> np.ndarray:
    finite = np.isfinite(matrix)
    if not finite.all():
        row, column = (int(index) for index in np.argwhere(~finite)[0])
        raise RequestError(
            400, f"{where} row {row}, feature {names[column]!r}: value {matrix[row, column]} is not finite"
        )
    return matrix


def describe_bad_rows(rows: list[Any], names: Sequence[str], where: str) -> RequestError:
    for number, row in enumerate(rows):
        if not isinstance(row, list):
            return RequestError(400, f"{where} row {number} is {brief(row)}, expected a list of {len(names)} numbers")
        if len(row) != len(names):
            return RequestError(
                400, f"{where} row {number}: expected {len(names)} values ({', '.join(names)}), got {len(row)}"
            )
        for column, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, int | float):
                return RequestError(
                    400, f"{where} row {number}, feature {names[column]!r}: expected a number, got {brief(value)}"
                )
    return RequestError(400, f"{where}: values could not be read as a matrix of numbers")


def csv_reader(body: bytes) -> tuple[list[str], Iterator[list[str]]]:
    """A CSV body's header row and a reader of its other rows (a byte-order mark is ignored).

    Raises:
        RequestError: The body is not UTF-8 or has no header row.
    """
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise RequestError(400, f"CSV body is not UTF-8: {error}") from error
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise RequestError(400, "CSV body needs a header row with the column names")
    return header, reader


def _csv_matrix(
    body: bytes, features: Sequence[str], max_rows: int, extra: ExtraColumns
) -> tuple[np.ndarray, Ids | None]:
    header, reader = csv_reader(body)
    ids: Ids | None = None
    lines: Any = reader
    if any(name in extra.accepted for name in header):  # read as text first: ids and ignored cells are not numbers
        check_names(header, features, "CSV", extra)
        text = [line for line in reader if line]
        check_rows(len(text), max_rows)
        lines, header, ids = split_extra(text, header, extra, "CSV")
    rows: list[list[Any]] = []
    for number, line in enumerate(lines):
        if len(rows) >= max_rows:
            raise RequestError(413, f"more than {max_rows} rows exceed the limit of {max_rows} rows per request")
        try:
            rows.append([float(cell) for cell in line])
        except ValueError as error:
            raise RequestError(400, f"CSV row {number}: {error}") from error
    return rows_matrix(rows, header, features, max_rows, "CSV")[0], ids


def check_names(names: list[str], features: Sequence[str], where: str, extra: ExtraColumns = NO_EXTRA) -> list[str]:
    """Refuse names that are not exactly the features (plus, where ``extra`` says, ids and ignored columns);
    returns those extra columns, in the order sent."""
    beside: list[str] = []
    if extra.accepted and not extra.accepted.isdisjoint(names):
        beside = [name for name in names if name in extra.accepted]
        names = [name for name in names if name not in extra.accepted]
    missing = [name for name in features if name not in names]
    unknown = [name for name in names if name not in features]
    if missing or unknown or len(names) != len(features) or len(set(beside)) != len(beside):
        parts = []
        if missing:
            parts.append(f"missing feature(s) {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown feature(s) {', '.join(map(str, unknown))}")
        if not parts:
            parts.append("repeated column names")
        raise RequestError(
            400, f"{where}: {'; '.join(parts)} (the model takes {', '.join(features)}{extra.describe()})"
        )
    return beside


def check_rows(count: int, max_rows: int) -> None:
    if count > max_rows:
        raise RequestError(413, f"{count} rows exceed the limit of {max_rows} rows per request; split the batch")


def _has_bool(values: list[Any]) -> bool:
    """Whether any value at any depth is a JSON boolean (no recursion: the depth is bounded by ``MAX_DEPTH``)."""
    pending: list[tuple[list[Any], int]] = [(values, 1)]
    while pending:
        items, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise too_deep()
        for value in items:
            if value is True or value is False:
                return True
            if isinstance(value, list):
                pending.append((value, depth + 1))
    return False


def brief(value: Any) -> str:
    """A value as short JSON for an error message (never recursing into a deep one)."""
    try:
        text = orjson.dumps(value).decode()
    except (orjson.JSONEncodeError, TypeError):  # orjson refuses more than 254 levels
        return f"a {type(value).__name__} nested too deeply"
    return text if len(text) <= 80 else text[:77] + "..."
