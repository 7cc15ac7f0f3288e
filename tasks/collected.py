"""The requests a model's servers collected, and the labels that arrive for them later, as frames.

Collection files are written by ``serving.collector`` (one header line, then one line per model
call). :func:`load_requests` reads a time window of them column-wise, including the files still
being written (only their complete lines), so a monitor sees requests up to the moment it runs —
from the local folder the servers write, or from the object storage (any fsspec URI) that the
serving hosts ship their finished files to (:mod:`tasks.ship_requests`).
Labels (delayed ground truth) land as CSV or Parquet files with a ``request_id`` column, the
target column and optionally ``row`` (the row of a multi-row request, default 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import orjson
import pandas as pd

from serving.collector import PARTIAL, SUFFIX

KEYS = ["request_id", "row"]


class LabelsError(ValueError):
    """A labels file lacks a column it needs or cannot be read."""


def _complete_lines(fs: Any, path: str) -> list[bytes]:
    data = fs.cat_file(path)
    end = data.rfind(b"\n")  # a file being written may end in a half-written line
    return data[: end + 1].splitlines() if end >= 0 else []


def _collection_files(fs: Any, root: str) -> list[tuple[str, float]]:
    """The collection files under ``root`` (finished and being written) with their modification times, by name."""
    found: list[tuple[str, float]] = []
    for path, info in fs.find(root, detail=True).items():
        name = path.rsplit("/", 1)[-1]
        if name.startswith("requests-") and name.endswith((SUFFIX, SUFFIX + PARTIAL)):
            modified = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
            stamp = modified.timestamp() if hasattr(modified, "timestamp") else float(modified or 0.0)
            found.append((path, stamp))
    return sorted(found, key=lambda item: item[0].rsplit("/", 1)[-1])


def load_requests(
    directory: Path | str,
    since: float,
    until: float | None = None,
    features: list[str] | None = None,
    probability_columns: list[str] | None = None,
) -> pd.DataFrame:
    """Every collected row with ``since <= time < until``: request_id, row, time (epoch s), model_version,
    one column per row id column of the model's spec (null where a request did not carry it: the business
    record a prediction belongs to), one column per feature, prediction (a classifier's label) and, for a
    classifier's collection, one column per class probability (named by ``probability_columns``, default
    ``probability.<i>``). Files last written before ``since`` are not opened. Damaged lines and rows without a
    usable answer (null, NaN, infinite) are left out and counted in ``frame.attrs["skipped"]`` (``lines``,
    ``rows``) for the monitor to report.

    Raises:
        ValueError: A file's features differ from ``features`` (or from the first file's).
    """
    until = float("inf") if until is None else until
    fs, root = fsspec.core.url_to_fs(str(directory))
    listed = _collection_files(fs, root) if fs.exists(root) else []
    columns: list[str] | None = list(features) if features else None
    ids: list[str] = []
    rows: list[np.ndarray] = []
    times: list[np.ndarray] = []
    versions: list[np.ndarray] = []
    inputs: list[np.ndarray] = []
    predictions: list[np.ndarray] = []
    probabilities: list[np.ndarray] = []
    id_names: list[str] = []
    id_values: dict[str, list[Any]] = {}
    skipped = {"lines": 0, "rows": 0}
    for path, modified in listed:
        if modified < since:
            continue
        try:
            lines = _complete_lines(fs, path)
        except FileNotFoundError:  # renamed from .part while we listed: the finished file is in the list
            continue
        if not lines:
            continue
        header = orjson.loads(lines[0])["header"]
        for name in header.get("ids") or []:
            if name not in id_names:
                id_names.append(name)
                id_values[name] = [None] * len(ids)  # rows read before a file that names it
        if columns is None:
            columns = list(header["features"])
        elif list(header["features"]) != columns:
            raise ValueError(f"{path.rsplit('/', 1)[-1]} holds features {header['features']}, expected {columns}")
        for line in lines[1:]:
            try:
                call = orjson.loads(line)
                if not since <= call["time"] < until:
                    continue
                counts = call["rows"]
                total = sum(counts)
                call_ids = [
                    request_id
                    for request_id, count in zip(call["request_ids"], counts, strict=True)
                    for _ in range(count)
                ]
                call_inputs = _values(call["inputs"]).reshape(total, len(columns))
                call_predictions = _values(call["predictions"]).reshape(total)
                call_probabilities = (
                    np.asarray(call["probabilities"], dtype=float).reshape(total, -1)
                    if "probabilities" in call
                    else None
                )
                sent = call.get("ids") or {}
                if not isinstance(sent, dict):
                    raise TypeError("ids must be an object of columns")
                call_row_ids = {name: list(sent.get(name) or [None] * total) for name in id_names}
                if any(len(values) != total for values in call_row_ids.values()):
                    raise ValueError("ids of another length than the rows")
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                skipped["lines"] += 1  # a damaged line: the rest of the window is still judged
                continue
            ids.extend(call_ids)
            for name, values in call_row_ids.items():
                id_values[name].extend(values)
            rows.append(np.concatenate([np.arange(count) for count in counts]))
            times.append(np.full(total, call["time"]))
            versions.append(np.full(total, header["model_version"], dtype=object))
            inputs.append(call_inputs)
            predictions.append(call_predictions)
            if call_probabilities is not None:
                probabilities.append(call_probabilities)
    columns = columns or []
    if probabilities and len(probabilities) != len(predictions):
        raise ValueError(f"{directory} mixes calls with and without probabilities: one model's files only")
    named = list(probability_columns or [])
    if probabilities and not named:
        named = [f"probability.{i}" for i in range(probabilities[0].shape[1])]
    if not ids:
        empty = pd.DataFrame(
            columns=["request_id", "row", "time", "model_version", *id_names, *columns, "prediction", *named]
        )
        empty.attrs["skipped"] = skipped
        return empty
    frame = pd.DataFrame(np.concatenate(inputs), columns=columns).infer_objects()
    frame.insert(0, "request_id", ids)
    frame.insert(1, "row", np.concatenate(rows))
    frame.insert(2, "time", np.concatenate(times))
    frame.insert(3, "model_version", np.concatenate(versions))
    for offset, name in enumerate(id_names):
        frame.insert(4 + offset, name, pd.Series(id_values[name], dtype=object))
    frame["prediction"] = np.concatenate(predictions)
    if probabilities:
        stacked = np.concatenate(probabilities)
        if stacked.shape[1] != len(named):
            raise ValueError(f"collected probabilities have {stacked.shape[1]} classes, expected {len(named)}")
        for index, name in enumerate(named):
            frame[name] = stacked[:, index]
    answered = _answered(frame["prediction"], frame[named] if named and probabilities else None)
    if not answered.all():  # a null or non-finite answer (collected before servers refused them): left out
        skipped["rows"] = int((~answered).sum())
        frame = frame[answered].reset_index(drop=True)
    frame.attrs["skipped"] = skipped
    return frame


def _answered(predictions: pd.Series, probabilities: pd.DataFrame | None) -> np.ndarray:
    """Rows whose collected answer is usable: a label, or a finite number (and finite probabilities)."""
    values = predictions.to_numpy()
    if values.dtype.kind == "f":
        usable = np.isfinite(values)
    else:
        usable = np.array(
            [value is not None and not (isinstance(value, float) and not np.isfinite(value)) for value in values],
            dtype=bool,
        )
    if probabilities is not None:
        usable &= np.isfinite(probabilities.to_numpy(dtype=float)).all(axis=1)
    return usable


def _values(values: list[Any]) -> np.ndarray:
    """Collected values as float64 (null → NaN), or as objects where a typed model collected text."""
    try:
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        return np.asarray(values, dtype=object)


def load_labels(directory: Path, target: str) -> pd.DataFrame:
    """All label files of ``directory`` (CSV or Parquet) as request_id, row, label; later files win.

    Raises:
        LabelsError: A file cannot be read or lacks ``request_id`` or ``target``.
    """
    frames = []
    for path in sorted(p for p in directory.glob("*") if p.suffix in (".csv", ".parquet")):
        try:
            frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype={"request_id": str})
        except Exception as error:
            raise LabelsError(f"labels file {path} cannot be read: {error}") from error
        missing = [column for column in ("request_id", target) if column not in frame.columns]
        if missing:
            raise LabelsError(f"labels file {path} lacks column(s) {', '.join(missing)} (has {list(frame.columns)})")
        if "row" not in frame.columns:
            frame["row"] = 0
        frames.append(frame[["request_id", "row", target]].rename(columns={target: "label"}))
    if not frames:
        return pd.DataFrame(
            {"request_id": pd.Series(dtype=str), "row": pd.Series(dtype=int), "label": pd.Series(dtype=float)}
        )
    labels = pd.concat(frames, ignore_index=True)
    labels["request_id"] = labels["request_id"].astype(str)
    labels["row"] = labels["row"].astype(int)
    return labels.drop_duplicates(KEYS, keep="last")


def join_labels(requests: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """The requests that have a label, with a ``label`` column (inner join on request id and row)."""
    return requests.merge(labels, on=KEYS, how="inner")


def rmse(joined: pd.DataFrame) -> float:
    """Root mean squared error of ``prediction`` against ``label``."""
    return float(np.sqrt(np.mean((joined["prediction"].to_numpy() - joined["label"].to_numpy(dtype=float)) ** 2)))
