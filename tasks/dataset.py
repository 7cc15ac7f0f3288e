"""Dataset snapshots: canonical bytes, sha256 digests, Parquet storage and a ledger.

The digest is the key of lineage: it depends only on the content (column names, values,
row order), never on the file format a batch arrived in or on pandas' dtype choices.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import fsspec
import numpy as np
import pandas as pd

SNAPSHOTS = "snapshots"
PROCESSED = "processed"
QUARANTINE = "quarantine"
LEDGER = "ledger.jsonl"


@dataclass(frozen=True)
class Snapshot:
    """An immutable, content-addressed copy of a dataset.

    Attributes:
        name: What the snapshot holds (a batch's file name, or ``training``).
        uri: Where the Parquet file lives.
        digest: sha256 of the canonical content.
        rows: Number of rows.
        columns: Column names in canonical order.
    """

    name: str
    uri: str
    digest: str
    rows: int
    columns: tuple[str, ...]


def canonical_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns sorted by name, numeric values as float64, a fresh 0..n-1 index."""
    ordered = frame[sorted(frame.columns)].reset_index(drop=True)
    return ordered.apply(lambda column: column.astype("float64") if is_numeric(column) else column)


def is_numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def dataset_digest(frame: pd.DataFrame) -> str:
    """sha256 of the canonical content; equal content always gives the same digest."""
    canonical = canonical_frame(frame)
    digest = hashlib.sha256()
    header = [(name, str(canonical[name].dtype)) for name in canonical.columns]
    digest.update(json.dumps({"columns": header, "rows": len(canonical)}).encode())
    for name in canonical.columns:
        column = canonical[name]
        if column.dtype == np.float64:
            # -0.0 and 0.0, and every NaN payload, are the same value.
            values = column.to_numpy(copy=True)
            values[values == 0] = 0.0
            values[np.isnan(values)] = np.nan
            digest.update(values.astype("<f8").tobytes())
        else:
            digest.update(json.dumps(column.astype(str).tolist()).encode())
    return digest.hexdigest()


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def read_bytes(uri: str) -> bytes:
    with fsspec.open(uri, "rb") as handle:
        return handle.read()


def write_bytes(uri: str, payload: bytes) -> None:
    fs, path = fsspec.core.url_to_fs(uri)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as handle:
        handle.write(payload)


def parse_table(payload: bytes, name: str) -> pd.DataFrame:
    """Read CSV or Parquet bytes by the file's extension.

    Raises:
        ValueError: The extension is unknown or the content cannot be parsed.
    """
    lowered = name.lower()
    try:
        if lowered.endswith(".csv"):
            text = io.StringIO(payload.decode("utf-8-sig"))  # a byte-order mark is not part of the first name
            _check_shape(csv.reader(text), name)
            text.seek(0)
            # CRLF and blank trailing lines read as a clean file does; never a first column taken as the index
            frame = pd.read_csv(text, index_col=False)
            _refuse_overflow(frame, name)
            return frame
        if lowered.endswith((".parquet", ".pq")):
            frame = pd.read_parquet(io.BytesIO(payload))
            _refuse_duplicates([str(column) for column in frame.columns], name)
            return frame
    except (DuplicateColumnsError, MalformedTableError):
        raise
    except Exception as error:  # any parser failure means the batch is unreadable
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise ValueError(f"{name}: cannot be parsed: {first}") from error
    raise ValueError(f"{name}: unsupported file type (expected .csv or .parquet)")


class DuplicateColumnsError(ValueError):
    """A batch names a column twice: which of the two is meant cannot be known."""


class MalformedTableError(ValueError):
    """A CSV batch whose shape or values cannot be read as the table it means (the message says where)."""


def _check_shape(rows: Any, name: str) -> None:
    """Every column named once, and every line with as many fields as the header names."""
    header: list[str] = next(rows, [])
    _refuse_duplicates(header, name)
    unnamed = [str(index + 1) for index, column in enumerate(header) if not column.strip()]
    if unnamed:
        raise MalformedTableError(
            f"{name}: header column(s) {', '.join(unnamed)} of {len(header)} have no name (a trailing comma in the "
            "header?): name every column, or remove the empty one, and land the file again"
        )
    for line, fields in enumerate(rows, start=2):
        if fields and len(fields) > len(header):
            extra = fields[len(header) :]
            why = "a trailing comma?" if not any(value.strip() for value in extra) else "an unquoted comma in a value?"
            raise MalformedTableError(
                f"{name}: line {line} has {len(fields)} fields but the header names {len(header)} columns ({why}): "
                "fix that line and land the file again"
            )


def _float_or_nan(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return math.nan


def _refuse_overflow(frame: pd.DataFrame, name: str) -> None:
    """A number too large for a 64-bit float (1e309) would turn its whole column into text: say so instead."""
    for column in frame.columns:
        if not pd.api.types.is_object_dtype(frame[column]):
            continue
        values = frame[column].dropna()
        text = values[values.map(lambda value: isinstance(value, str))].astype(str).str.strip()
        numbers = text.map(_float_or_nan).astype(float)  # Python's float reads 1e309 as inf; pandas gives up
        overflow = np.isinf(numbers) & ~text.str.lower().str.lstrip("+-").isin(["inf", "infinity"])
        if overflow.any():
            row = overflow.idxmax()
            raise MalformedTableError(
                f"{name}: column {column!r} line {int(row) + 2}: {text[row]} does not fit a 64-bit float "
                "(a unit or typing error?): fix the value and land the file again"
            )


def _refuse_duplicates(header: list[str], name: str) -> None:
    names = [column.strip() for column in header]
    repeated = sorted({column for column in names if names.count(column) > 1})
    if repeated:
        raise DuplicateColumnsError(
            f"{name}: duplicated column names {repeated}: every column needs a name of its own; "
            "rename or drop the repeated ones and land the file again"
        )


def store_snapshot(frame: pd.DataFrame, data_uri: str, name: str) -> Snapshot:
    """Write the frame as Parquet under ``<data>/snapshots/<digest>.parquet``."""
    digest = dataset_digest(frame)
    uri = join_uri(data_uri, SNAPSHOTS, f"{digest}.parquet")
    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        buffer = io.BytesIO()
        frame.reset_index(drop=True).to_parquet(buffer, index=False)
        write_bytes(uri, buffer.getvalue())
    return Snapshot(name=name, uri=uri, digest=digest, rows=len(frame), columns=tuple(frame.columns))


def load_snapshot(snapshot: Snapshot) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(read_bytes(snapshot.uri)))


def append_ledger(data_uri: str, snapshot: Snapshot, source_sha256: str, validation: dict[str, Any]) -> None:
    """Record an accepted batch with its validation result; the ledger's order is the order of arrival."""
    uri = join_uri(data_uri, LEDGER)
    fs, path = fsspec.core.url_to_fs(uri)
    entry = {
        **asdict(snapshot),
        "source_sha256": source_sha256,
        "accepted_at": datetime.now(UTC).isoformat(),
        "validation": validation,
    }
    existing = fs.cat_file(path).decode() if fs.exists(path) else ""
    write_bytes(uri, (existing + json.dumps(entry) + "\n").encode())


def ledger_entries(data_uri: str) -> list[dict[str, Any]]:
    """Accepted batches in order of arrival, with their validation results."""
    fs, path = fsspec.core.url_to_fs(join_uri(data_uri, LEDGER))
    if not fs.exists(path):
        return []
    return [json.loads(line) for line in fs.cat_file(path).decode().splitlines() if line.strip()]


def accepted_snapshots(data_uri: str) -> list[Snapshot]:
    """Accepted batches in order of arrival."""
    return [
        Snapshot(
            name=entry["name"],
            uri=entry["uri"],
            digest=entry["digest"],
            rows=entry["rows"],
            columns=tuple(entry["columns"]),
        )
        for entry in ledger_entries(data_uri)
    ]
