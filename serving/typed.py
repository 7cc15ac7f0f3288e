"""Typed models: one value per column (numbers, strings, nulls where the spec allows them), and classifiers.

A bundle's ``inputs`` say, per column, the graph input that takes it, its tensor type
(``double`` or ``string``), its kind, whether it may be missing and, for categories, the string a
missing value becomes and the categories seen in training. Requests arrive as raw values per
column (:func:`mlflow_columns`, or :mod:`serving.v2`); :class:`TypedSchema` turns them into the
session's feeds exactly as training typed its data (``tasks.features.typed_features``):

- numbers: ints and floats; ``true``/``false`` for boolean columns; a null (or NaN) only where
  the column may be missing, where the graph imputes it; strings from CSV are parsed;
- categories: strings as given; numbers as their text (``3.0`` is ``3``); null → the fill string.
  A category not seen in training is scored (one-hot ignores it) and counted per column.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.bundle import BundleError, ModelMetadata
from serving.protocols import (
    NO_EXTRA,
    ExtraColumns,
    Ids,
    RequestError,
    brief,
    check_names,
    check_rows,
    checked_ids,
    csv_reader,
    mlflow_payload,
    record_ids,
)

# How a boolean column's text reads (training types its data with the same words: tasks.features).
TRUE_WORDS = frozenset({"true", "1", "1.0", "yes", "y", "t"})
FALSE_WORDS = frozenset({"false", "0", "0.0", "no", "n", "f"})
Columns = dict[str, list[Any]]


@dataclass(frozen=True)
class Column:
    """One input column of a typed bundle."""

    name: str
    input: str
    type: str  # double | string
    kind: str
    nullable: bool
    fill: str | None
    categories: frozenset[str] | None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Column:
        try:
            categories = raw.get("categories")
            return cls(
                name=str(raw["column"]),
                input=str(raw["input"]),
                type=str(raw.get("type", "double")),
                kind=str(raw.get("kind", "numeric")),
                nullable=bool(raw.get("nullable", False)),
                fill=None if raw.get("fill") is None else str(raw["fill"]),
                categories=None if categories is None else frozenset(map(str, categories)),
            )
        except KeyError as error:
            raise BundleError(f"an input of the bundle's metadata lacks {error}") from error


class TypedSchema:
    """Raw column values → the session's feeds; counts categories not seen in training."""

    def __init__(self, meta: ModelMetadata) -> None:
        self.columns = [Column.from_dict(item) for item in meta.inputs] or [
            Column(name, meta.input_name, "double", "numeric", False, None, None) for name in meta.features
        ]
        self.names = [column.name for column in self.columns]
        matrix = bool(meta.input_name) and all(column.input == meta.input_name for column in self.columns)
        self.matrix_input = meta.input_name if matrix else None
        self.unknown_categories: dict[str, int] = {}

    def feeds(self, values: Columns, where: str, text: bool = False) -> dict[str, np.ndarray]:
        """The session's feeds for ``values`` (column name → raw values, all of one length).
        ``text``: values are CSV cells (strings, '' for null)."""
        typed: list[Any] = []
        for column in self.columns:
            raw = values[column.name]
            if column.type == "string":
                typed.append(self._strings(raw, column, where, text))
            else:
                typed.append(_doubles(raw, column, where, text))
        if self.matrix_input is not None:
            return {self.matrix_input: np.column_stack(typed)}
        return {column.input: values.reshape(-1, 1) for column, values in zip(self.columns, typed, strict=True)}

    def rows_of(self, feeds: dict[str, np.ndarray]) -> list[list[Any]]:
        """Feeds as rows of JSON-ready values in column order (NaN → None): what is collected."""
        if self.matrix_input is not None:
            matrix = feeds[self.matrix_input]
            columns = [matrix[:, index] for index in range(matrix.shape[1])]
        else:
            columns = [feeds[column.input].reshape(-1) for column in self.columns]
        return [
            [None if type(value) is float and math.isnan(value) else value for value in row]
            for row in zip(*(column.tolist() for column in columns), strict=True)
        ]

    def _strings(self, raw: list[Any], column: Column, where: str, text: bool) -> np.ndarray:
        out = np.empty(len(raw), dtype=object)
        known = column.categories
        unknown = 0
        for row, value in enumerate(raw):
            kind = type(value)
            if kind is str and not (text and value == ""):
                out[row] = value
            elif value is None or (text and value == "") or (kind is float and math.isnan(value)):
                if not column.nullable:
                    raise _not_nullable(column, row, where)
                out[row] = column.fill
                continue
            elif kind is bool or kind is int:
                out[row] = str(value)
            elif kind is float:
                out[row] = str(int(value)) if value.is_integer() else str(value)
            else:
                raise RequestError(
                    400, f"{where} row {row}, column {column.name!r}: expected a category (text), got {brief(value)}"
                )
            if known is not None and out[row] not in known:
                unknown += 1
        if unknown:
            self.unknown_categories[column.name] = self.unknown_categories.get(column.name, 0) + unknown
        return out


def _doubles(raw: list[Any], column: Column, where: str, text: bool) -> np.ndarray:
    out = np.empty(len(raw), dtype=np.float64)
    boolean = column.kind == "boolean"
    for row, value in enumerate(raw):
        kind = type(value)
        if kind is float or kind is int:
            number = float(value)
        elif value is None or (text and value == ""):
            number = math.nan
        elif kind is bool and boolean:
            number = 1.0 if value else 0.0
        elif kind is str and (text or boolean):
            number = _parse_number(value, column, row, where, boolean)
        else:
            expected = "true/false or a number" if boolean else "a number"
            raise RequestError(
                400, f"{where} row {row}, column {column.name!r}: expected {expected}, got {brief(value)}"
            )
        if math.isnan(number):
            if not column.nullable:
                raise _not_nullable(column, row, where)
        elif math.isinf(number):
            raise RequestError(400, f"{where} row {row}, column {column.name!r}: value {number} is not finite")
        out[row] = number
    return out


def _parse_number(value: str, column: Column, row: int, where: str, boolean: bool) -> float:
    word = value.strip().lower()
    if boolean and word in TRUE_WORDS:
        return 1.0
    if boolean and word in FALSE_WORDS:
        return 0.0
    try:
        return float(word)
    except ValueError:
        expected = "true/false or a number" if boolean else "a number"
        raise RequestError(
            400, f"{where} row {row}, column {column.name!r}: expected {expected}, got {value!r}"[:300]
        ) from None


def _not_nullable(column: Column, row: int, where: str) -> RequestError:
    return RequestError(
        400,
        f"{where} row {row}, column {column.name!r}: missing, but {column.name} may not be missing "
        "(the model's spec does not declare it nullable)",
    )


# --- MLflow's scoring protocol, as columns of raw values ------------------------------------


def mlflow_columns(
    body: bytes, content_type: str, names: Sequence[str], max_rows: int, extra: ExtraColumns = NO_EXTRA
) -> tuple[Columns, dict[str, Any], bool, Ids | None]:
    """An ``/invocations`` request as raw values per column, its ``params``, whether the values are CSV text, and
    the row ids it carried (None when none; ignored columns are dropped)."""
    if content_type.startswith("text/csv"):
        columns, ids = _csv_columns(body, names, max_rows, extra)
        return columns, {}, True, ids
    key, value, params = mlflow_payload(body)
    if key == "dataframe_split":
        if not isinstance(value, dict) or "data" not in value:
            raise RequestError(400, "dataframe_split must be an object with 'data' (rows) and 'columns'")
        columns, ids = _rows_columns(value["data"], value.get("columns"), names, max_rows, key, extra)
        return columns, params, False, ids
    if isinstance(value, dict):
        check_names(list(value), names, key, extra)
        lengths = {len(v) if isinstance(v, list) else -1 for v in value.values()}
        if len(lengths) != 1 or -1 in lengths:
            raise RequestError(400, f"{key} columns must be lists of equal length")
        check_rows(lengths.pop(), max_rows)
        ids = checked_ids({name: value[name] for name in extra.ids if name in value}, key)
        return {name: value[name] for name in names}, params, False, ids
    if isinstance(value, list) and value and all(isinstance(record, dict) for record in value):
        check_rows(len(value), max_rows)
        beside = False
        for row, record in enumerate(value):
            if len(record) != len(names) or any(name not in record for name in names):
                beside |= bool(check_names(list(record), names, f"{key} row {row}", extra))
        ids = record_ids(value, extra, key) if beside else None
        return {name: [record[name] for record in value] for name in names}, params, False, ids
    columns, ids = _rows_columns(value, None, names, max_rows, key)
    return columns, params, False, ids


def _rows_columns(
    rows: Any, columns: Any, names: Sequence[str], max_rows: int, where: str, extra: ExtraColumns = NO_EXTRA
) -> tuple[Columns, Ids | None]:
    if not isinstance(rows, list) or not rows:
        raise RequestError(400, f"{where} must hold a non-empty list of rows")
    check_rows(len(rows), max_rows)
    order = list(names) if columns is None else columns
    if not isinstance(order, list) or not all(isinstance(name, str) for name in order):
        raise RequestError(400, f"{where} columns must be a list of column names")
    beside = check_names(order, names, where, extra)
    for row, values in enumerate(rows):
        if not isinstance(values, list) or len(values) != len(order):
            raise RequestError(400, f"{where} row {row}: expected a list of {len(order)} values ({', '.join(order)})")
    position = {name: index for index, name in enumerate(order)}
    ids = None
    if beside:
        ids = checked_ids({n: [values[position[n]] for values in rows] for n in extra.ids if n in position}, where)
    return {name: [values[position[name]] for values in rows] for name in names}, ids


def _csv_columns(body: bytes, names: Sequence[str], max_rows: int, extra: ExtraColumns) -> tuple[Columns, Ids | None]:
    header, reader = csv_reader(body)
    rows: list[list[str]] = []
    for line in reader:
        if not line:
            continue
        if len(rows) >= max_rows:
            raise RequestError(413, f"more than {max_rows} rows exceed the limit of {max_rows} rows per request")
        rows.append(line)
    return _rows_columns(rows, header, names, max_rows, "CSV", extra)
