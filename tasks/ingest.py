"""Ingestion: find new batches in the landing area, read them, accept or quarantine them.

A landed file leaves the landing area exactly once: byte-identical into ``processed/``
when accepted (its content also stored as a Parquet snapshot), or into ``quarantine/``
with its validation result beside it when rejected. Nothing is dropped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import fsspec
import pandas as pd
from prefect import task

from tasks.dataset import (
    PROCESSED,
    QUARANTINE,
    Snapshot,
    accepted_snapshots,
    append_ledger,
    join_uri,
    ledger_entries,
    load_snapshot,
    parse_table,
    read_bytes,
    store_snapshot,
    write_bytes,
)
from tasks.events import emit

BATCH_SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass(frozen=True)
class LandedBatch:
    """A file waiting in the landing area.

    Attributes:
        name: File name.
        uri: Full URI of the file.
        sha256: sha256 of the file's bytes.
        size: Size in bytes.
    """

    name: str
    uri: str
    sha256: str
    size: int


class NoDataError(RuntimeError):
    """There is nothing to train on."""


@task(retries=2, retry_delay_seconds=1)
def list_new_batches(landing_uri: str) -> list[LandedBatch]:
    """List CSV/Parquet files in the landing area, oldest name first (names sort by arrival)."""
    fs, root = fsspec.core.url_to_fs(landing_uri)
    if not fs.exists(root):
        return []
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    batches = []
    for path in sorted(fs.find(root)):
        name = path.rsplit("/", 1)[-1]
        if name.startswith(".") or not name.lower().endswith(BATCH_SUFFIXES):
            continue
        uri = path if protocol == "file" else f"{protocol}://{path}"
        payload = fs.cat_file(path)
        batches.append(LandedBatch(name=name, uri=uri, sha256=hashlib.sha256(payload).hexdigest(), size=len(payload)))
    return batches


@dataclass(frozen=True)
class ReadResult:
    """A parsed batch, or why it could not be parsed."""

    frame: pd.DataFrame | None
    error: str | None = None


@task(retries=2, retry_delay_seconds=1)
def read_batch(batch: LandedBatch) -> ReadResult:
    """Read a landed batch; unparseable content is a result (to quarantine), I/O errors are retried."""
    payload = read_bytes(batch.uri)
    try:
        return ReadResult(parse_table(payload, batch.name))
    except ValueError as error:
        return ReadResult(None, str(error))


def _move_unchanged(batch: LandedBatch, destination_uri: str) -> str:
    """Copy the file's exact bytes, verify them, then remove the original."""
    payload = read_bytes(batch.uri)
    if hashlib.sha256(payload).hexdigest() != batch.sha256:
        raise RuntimeError(f"{batch.uri} changed while it was being processed; it was left in place")
    write_bytes(destination_uri, payload)
    if hashlib.sha256(read_bytes(destination_uri)).hexdigest() != batch.sha256:
        raise RuntimeError(f"copy of {batch.uri} to {destination_uri} is not byte-identical; original kept")
    fs, path = fsspec.core.url_to_fs(batch.uri)
    fs.rm(path)
    return destination_uri


@task
def quarantine_batch(batch: LandedBatch, data_uri: str, dataset: str, validation: dict[str, Any]) -> str:
    """Move a rejected batch, byte-identical, into quarantine with its validation result beside it.

    Returns:
        URI of the quarantined file.
    """
    destination = join_uri(data_uri, QUARANTINE, batch.name)
    report = {"batch": batch.name, "source_uri": batch.uri, "sha256": batch.sha256, **validation}
    write_bytes(destination + ".validation.json", json.dumps(report, indent=2, default=str).encode())
    moved = _move_unchanged(batch, destination)
    emit("data.rejected", "dataset", dataset, {"batch": batch.name, "quarantined": moved, **validation})
    return moved


@task
def accept_batch(
    batch: LandedBatch, frame: pd.DataFrame, data_uri: str, dataset: str, validation: dict[str, Any]
) -> str | None:
    """Store an accepted batch as a snapshot, archive its file, and append it (with its validation) to the ledger.

    A batch whose content was ingested before — the same bytes, or the same rows re-encoded (a
    byte-order mark, CRLF, blank lines, quoted numbers, Parquet instead of CSV: one dataset digest) —
    is archived under ``processed/duplicates`` and not added again, so training never sees the
    same rows twice.

    Returns:
        None when the batch was added; else why it was not (the batch it repeats), for the run's log.
    """
    snapshot = store_snapshot(frame, data_uri, batch.name)
    entries = ledger_entries(data_uri)
    same = next((e for e in entries if e["source_sha256"] == batch.sha256 or e.get("digest") == snapshot.digest), None)
    if same is not None:
        _move_unchanged(batch, join_uri(data_uri, PROCESSED, "duplicates", batch.name))
        how = "the same file" if same["source_sha256"] == batch.sha256 else "the same rows"
        return (
            f"{batch.name} holds {how} as {same['name']} (dataset digest {snapshot.digest[:12]}), accepted before: "
            "archived under processed/duplicates/, not added again"
        )
    _move_unchanged(batch, join_uri(data_uri, PROCESSED, batch.name))
    append_ledger(data_uri, snapshot, batch.sha256, validation)
    emit("data.accepted", "dataset", dataset, {"batch": batch.name, "digest": snapshot.digest, "rows": snapshot.rows})
    return None


def accepted_frame(data_uri: str) -> pd.DataFrame | None:
    """All accepted data so far, in order of arrival; None before the first accepted batch."""
    snapshots = accepted_snapshots(data_uri)
    if not snapshots:
        return None
    return pd.concat([load_snapshot(snapshot) for snapshot in snapshots], ignore_index=True)


@task
def reference_data(data_uri: str) -> pd.DataFrame | None:
    """What new batches are validated against: all data accepted so far (None before the first)."""
    return accepted_frame(data_uri)


@task
def assemble_training_set(data_uri: str) -> tuple[pd.DataFrame, Snapshot]:
    """Concatenate every accepted batch into one training snapshot.

    Raises:
        NoDataError: No batch has been accepted yet.
    """
    frame = accepted_frame(data_uri)
    if frame is None:
        raise NoDataError(
            f"no accepted data under {data_uri}: land CSV/Parquet batches in the model's landing folder "
            "(`mlops land --model NAME` writes a model's example batches) and run the flow again"
        )
    return frame, store_snapshot(frame, data_uri, "training")
