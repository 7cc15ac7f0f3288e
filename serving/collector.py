"""Request collection off the request path: a bounded queue, a writer thread, rolling JSONL files.

A file starts with a header line naming what every line after it shares, then holds one line
per model call — one request, or several that were micro-batched together — encoded by orjson
straight from the numpy arrays (time in epoch seconds; ``rows`` says how many rows of
``inputs``/``predictions`` belong to each request id, in order)::

    {"header": {"model": "diabetes", "model_version": "3", "features": ["age", ...], "format": 2}}

(a classifier's header also lists its ``classes``, the order of the ``probabilities`` on its lines)
    {"request_ids": ["a1", "b2"], "rows": [1, 2], "time": 1795386921.98, "inputs": [[59.0, ...], ...],
     "predictions": [151.2, 80.1, 99.0]}

A model whose spec names row id columns lists them in the header (``"ids": ["patient_id"]``); a line
of a call where a request carried them holds them by column, a value per row (null for the rows of
requests that did not): ``"ids": {"patient_id": ["P00017", null, null]}``.

:func:`iter_collected` turns them back into one record per row. Lines are encoded on the
request path (one orjson call per model call); the writer thread only writes bytes, so it
never holds the GIL the event loop needs.

A file is written as ``requests-<start>-<pid>-<n>.jsonl.part`` and renamed to ``.jsonl`` when it
rolls (by rows or age) or the server shuts down, so readers only ever see whole files. When the
queue is full the request is still answered and its rows are counted as dropped.

The writer survives write errors (a full disk, a folder made read-only): the rows it could not
write are counted as dropped, the error is counted and kept (``write_errors``, ``last_error``, both
in ``/metrics``), a warning is logged at most once a minute, and writing resumes once the folder
takes files again — the file it was writing is finished then (cut at its last whole line). Files
and folders are created private to the serving user (0600 / 0700).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

SUFFIX = ".jsonl"
FORMAT = 2
ENCODING = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
PARTIAL = ".part"
WARN_EVERY_SECONDS = 60.0
logger = logging.getLogger("serving.collector")


@dataclass(frozen=True)
class CollectorConfig:
    """Where and how collected requests are written.

    Attributes:
        directory: Folder of the rolling files.
        queue_size: Model calls (each one or more requests) waiting to be written before new ones are dropped.
        file_rows: Rows per file before it rolls.
        file_seconds: Age of a file before it rolls.
        flush_seconds: How often the writer wakes to write what has been queued.
    """

    directory: Path
    queue_size: int = 10_000
    file_rows: int = 100_000
    file_seconds: float = 300.0
    flush_seconds: float = 0.1


class RequestCollector:
    """Writes scored requests in a background thread; ``close()`` flushes and finishes the open file."""

    def __init__(
        self,
        config: CollectorConfig,
        model: str,
        version: str,
        features: Sequence[str],
        classes: Sequence[Any] = (),
        ids: Sequence[str] = (),
    ) -> None:
        self.config = config
        self.model, self.version, self.features = model, version, list(features)
        self.classes = list(classes)  # a classifier's, in the order of its collected probabilities
        self.ids = list(ids)  # the spec's row id columns, collected beside the inputs when requests carry them
        self.written_rows = 0
        self.dropped_rows = 0
        self.write_errors = 0
        self.last_error = ""
        self._warned = -WARN_EVERY_SECONDS
        self._unfinished: list[Path] = []  # files left open by a write error, finished once writing works again
        self._queue: deque[tuple[bytes, int]] = deque()  # encoded line, rows
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self._file_rows = 0
        self._file_started = 0.0
        self._sequence = 0

    @property
    def pending(self) -> int:
        return len(self._queue)

    def start(self) -> RequestCollector:
        self.config.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="request-collector", daemon=True)
        self._thread.start()
        return self

    def submit(
        self, request_id: str, matrix: np.ndarray, predictions: np.ndarray, ids: dict[str, list[Any]] | None = None
    ) -> bool:
        """Queue one scored request without blocking; False (and counted as dropped) when the queue is full."""
        return self.submit_call([request_id], [len(predictions)], matrix, predictions, row_ids=[ids] if ids else None)

    def submit_call(
        self,
        request_ids: list[str],
        rows: list[int],
        matrix: np.ndarray | list[list[Any]],
        predictions: np.ndarray | list[Any],
        extra: dict[str, Any] | None = None,
        row_ids: Sequence[dict[str, list[Any]] | None] | None = None,
    ) -> bool:
        """Queue one model call's requests (``rows[i]`` rows for ``request_ids[i]``) without blocking; ``extra``
        (e.g. a classifier's probabilities) is written beside the predictions, ``row_ids`` (per request: its id
        columns, or None) beside the inputs."""
        if len(self._queue) >= self.config.queue_size:
            self.dropped_rows += len(predictions)
            return False
        # Encoded here, on the event loop, in one orjson call per model call (microseconds): the writer
        # thread then only does file I/O, which releases the GIL, instead of competing for it.
        record = {
            "request_ids": request_ids,
            "rows": rows,
            "time": time.time(),
            "inputs": matrix,
            "predictions": predictions,
            **(extra or {}),
        }
        if row_ids is not None and self.ids:
            record["ids"] = self._id_columns(rows, row_ids)
        self._queue.append((orjson.dumps(record, option=ENCODING), len(predictions)))
        return True

    def _id_columns(self, rows: list[int], row_ids: Sequence[dict[str, list[Any]] | None]) -> dict[str, list[Any]]:
        """The call's id columns, a value per row (null for rows whose request did not carry the column)."""
        columns: dict[str, list[Any]] = {}
        for name in self.ids:
            values: list[Any] = []
            for count, sent in zip(rows, row_ids, strict=True):
                given = sent.get(name) if sent else None
                values.extend(given if given is not None else [None] * count)
            columns[name] = values
        return columns

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued, close the open file and stop the writer."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.config.flush_seconds):
            self._drain()
            self._guarded(self._roll_if_old)
        self._drain()
        self._guarded(self._finish_file)

    def _drain(self) -> None:
        lines: list[bytes] = []
        rows = 0
        while self._queue:
            line, count = self._queue.popleft()
            lines.append(line)
            rows += count
            if rows >= self.config.file_rows - self._file_rows:
                self._write(b"".join(lines), rows)
                lines, rows = [], 0
        if rows:
            self._write(b"".join(lines), rows)

    def _write(self, lines: bytes, rows: int) -> None:
        """Append, or count the rows as dropped when the file system refuses; then roll a full file."""
        if not self._guarded(self._append, lines, rows):
            self.dropped_rows += rows
        elif self._file_rows >= self.config.file_rows:
            self._guarded(self._finish_file)  # written already: a failed rename leaves it to finish later

    def _guarded(self, step: Any, *args: Any) -> bool:
        """Run one file step; on an error count it, keep it, warn (rate-limited) and drop the open file."""
        try:
            step(*args)
        except OSError as error:
            self.write_errors += 1
            self.last_error = f"{type(error).__name__}: {error}"[:300]
            if time.monotonic() - self._warned >= WARN_EVERY_SECONDS:
                self._warned = time.monotonic()
                logger.warning(
                    "collection into %s failed (%d errors, %d rows dropped so far): %s",
                    self.config.directory,
                    self.write_errors,
                    self.dropped_rows,
                    self.last_error,
                )
            self._abandon_file()
            return False
        return True

    def _append(self, lines: bytes, rows: int) -> None:
        handle = self._open()
        handle.write(lines)
        handle.flush()
        self._file_rows += rows
        self.written_rows += rows

    def _abandon_file(self) -> None:
        """Stop writing the open file (finished later by :meth:`_finish_unfinished`)."""
        if self._file is not None:
            with contextlib.suppress(OSError):  # its buffered rows are counted as dropped by the caller
                self._file.close()
        if self._path is not None:
            self._unfinished.append(self._path)
        self._file, self._path = None, None

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self.config.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._finish_unfinished()
            self._sequence += 1
            started = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            name = f"requests-{started}-{os.getpid()}-{self._sequence:04d}{SUFFIX}{PARTIAL}"
            path = self.config.directory / name
            self._file = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
            self._path = path
            self._file_rows, self._file_started = 0, time.monotonic()
            header = {"model": self.model, "model_version": self.version, "features": self.features, "format": FORMAT}
            if self.classes:
                header["classes"] = self.classes
            if self.ids:
                header["ids"] = self.ids
            self._file.write(orjson.dumps({"header": header}, option=orjson.OPT_APPEND_NEWLINE))
        return self._file

    def _finish_unfinished(self) -> None:
        """Cut each file a write error left open at its last whole line and finish it (now that writing works)."""
        while self._unfinished:
            path = self._unfinished[0]
            if path.exists():
                content = path.read_bytes()
                whole = content[: content.rfind(b"\n") + 1]
                if whole != content:
                    with path.open("r+b") as handle:
                        handle.truncate(len(whole))
                path.rename(path.with_name(path.name.removesuffix(PARTIAL)))
            self._unfinished.pop(0)

    def _roll_if_old(self) -> None:
        if self._file is not None and time.monotonic() - self._file_started >= self.config.file_seconds:
            self._finish_file()

    def _finish_file(self) -> None:
        if self._file is None or self._path is None:
            return
        self._file.close()
        self._path.rename(self._path.with_name(self._path.name.removesuffix(PARTIAL)))
        self._file, self._path = None, None


def requests_dir(home: Path, model: str) -> Path:
    """Where the deployments of ``model`` collect their requests, under the embedded home."""
    return home / "requests" / model


def collected_files(directory: Path) -> list[Path]:
    """Finished collection files, oldest first."""
    return sorted(directory.glob(f"requests-*{SUFFIX}"))


def iter_collected(directory: Path) -> Iterator[dict[str, Any]]:
    """Every collected row of the finished files: request id, time (ISO, UTC), model, version, row, one key per
    id column (null where the request did not carry it), one key per feature, prediction."""
    for path in collected_files(directory):
        with path.open("rb") as handle:
            header = orjson.loads(handle.readline())["header"]
            features, id_names = header["features"], header.get("ids") or []
            for line in handle:
                call = orjson.loads(line)
                stamp = datetime.fromtimestamp(call["time"], UTC).isoformat()
                sent = call.get("ids") or {}
                total = len(call["predictions"])
                ids = [sent.get(name) or [None] * total for name in id_names]
                id_rows = list(zip(*ids, strict=True)) if ids else [()] * total
                rows = iter(zip(call["inputs"], call["predictions"], id_rows, strict=True))
                for request_id, count in zip(call["request_ids"], call["rows"], strict=True):
                    head = {
                        "request_id": request_id,
                        "time": stamp,
                        "model": header["model"],
                        "model_version": header["model_version"],
                    }
                    for number in range(count):
                        values, prediction, row_ids = next(rows)
                        yield {
                            **head,
                            "row": number,
                            **dict(zip(id_names, row_ids, strict=True)),
                            **dict(zip(features, values, strict=True)),
                            "prediction": prediction,
                        }
