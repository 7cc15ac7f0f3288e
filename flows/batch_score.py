"""Batch scoring: a CSV/Parquet file or folder scored by a registered version with onnxruntime.

    python -m flows.batch_score INPUT OUTPUT [--version champion] [--chunk-rows 50000] [--dask tcp://host:8786]

The version's ONNX bundle (sha256-checked, the same file the servers run) scores the input in
chunks; every chunk becomes one Parquet part with the input's columns, ``prediction`` (a
classifier's label), for a classifier ``probability_<class>`` per class, ``model_version`` and
``request_id`` (see :mod:`tasks.batch` for the layout, resumption and
quarantined rows). Progress shows as a Prefect progress artifact and a log line per chunk.

With a Dask scheduler (``--dask`` / ``MLOPS_DASK_ADDRESS``) each file of the input (a partition of a
partitioned Parquet data set) is scored as its own task on a Dask worker (:mod:`tasks.batch_dask`), with
the same output; progress then advances per file.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import cast
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from pydantic import BaseModel, Field

from flows.run_once import print_outcome
from mlops.settings import get_settings
from serving.model import open_session
from tasks.batch import (
    REJECTED,
    FileScores,
    Manifest,
    RowParallelSession,
    batch_schema,
    count_rows,
    fingerprint,
    input_files,
    open_output,
    score_file,
)
from tasks.batch_dask import DASK_ADDRESS_ENV, score_on_dask
from tasks.events import artifact_key
from tasks.serving_bundle import fetch_bundle, model_uri, resolve_version
from tasks.tracking import check_tracking_server

# From bench/batch_score.py: see the README's batch scoring table.
DEFAULT_CHUNK_ROWS = 50_000


class BatchScoreParameters(BaseModel):
    """Parameters of a batch scoring run (rendered as a form in the Prefect UI)."""

    input: str | None = Field(None, description="CSV/Parquet file, or a folder of them (default: <home>/batch/input).")
    output: str | None = Field(
        None,
        description="Folder of the scored Parquet parts, resumed if it holds this run "
        "(default: <home>/batch/output/<input name>-<model>-v<version>).",
    )
    version: str = Field("champion", description="Version number or alias.")
    model_name: str | None = Field(None, description="Registered model name (default: MLOPS_MODEL_NAME).")
    chunk_rows: int = Field(DEFAULT_CHUNK_ROWS, ge=1, description="Rows per chunk (and per output part).")
    threads: int = Field(
        0, ge=0, description="Slices of each chunk scored at once, one onnxruntime thread each (0: one per core)."
    )
    dask_address: str | None = Field(
        None,
        description="Dask scheduler (tcp://host:8786) to score each file on as a task (default: MLOPS_DASK_ADDRESS; "
        "unset: this process).",
    )


@dataclass(frozen=True)
class BatchOutcome:
    """What a batch scoring run did."""

    model_name: str
    version: str
    output: str
    files: int
    rows: int
    scored: int
    rejected: int
    parts_written: int
    parts_resumed: int
    seconds: float
    rows_per_second: float
    workers: dict[str, int] = field(default_factory=dict)  # Dask worker (host:pid) -> files it scored
    peak_rss_mb: float = 0.0  # the largest peak memory of a Dask worker process


@flow(name="batch-score", log_prints=True)
def batch_score_flow(params: BatchScoreParameters) -> BatchOutcome:
    """Score a file or folder with a registered version, chunk by chunk, resuming what a crashed run wrote."""
    started = time.perf_counter()
    settings = get_settings()
    logger = get_run_logger()
    model_name = params.model_name or settings.model_name
    tracking = settings.tracking_uri
    check_tracking_server(tracking)
    version = str(resolve_version(tracking, model_uri(model_name, params.version)).version)
    bundle = settings.resolved_home / "bundles" / f"{model_name}-{version}"
    model_file, metadata = fetch_bundle(tracking, f"models:/{model_name}/{version}", bundle)
    schema = batch_schema(metadata)

    source = Path(params.input) if params.input else settings.resolved_home / "batch" / "input"
    files = input_files(source)
    default_output = settings.resolved_home / "batch" / "output" / f"{source.stem}-{model_name}-v{version}"
    output = Path(params.output) if params.output else default_output
    open_output(output, Manifest(model_name, version, metadata.sha256, params.chunk_rows, fingerprint(files)))
    total = sum(count_rows(path) for path in files)
    progress = cast(
        UUID,
        create_progress_artifact(
            0.0, key=artifact_key("batch-score", model_name), description=f"{model_name} v{version}: {total} rows"
        ),
    )
    done = 0

    def advance(rows: int, what: str) -> None:
        nonlocal done
        done += rows
        update_progress_artifact(progress, 100.0 * done / max(total, 1))
        logger.info("%s: %d/%d rows (%.0f%%)", what, done, total, 100.0 * done / max(total, 1))

    def chunk_done(path: Path, index: int, rows: int) -> None:
        advance(rows, f"{path.name} part {index}")

    def partition_done(path: Path, scores: FileScores) -> None:
        advance(scores.rows, f"{path.name}: {scores.rows} rows on {scores.worker}")

    address = params.dask_address or os.environ.get(DASK_ADDRESS_ENV)
    if address:
        logger.info("scoring %d file(s) as tasks on the Dask scheduler at %s", len(files), address)
        results = score_on_dask(address, tracking, metadata, version, files, output, params.chunk_rows, partition_done)
    else:
        with RowParallelSession(open_session(str(model_file), 1), params.threads or os.cpu_count() or 1) as session:
            results = [
                score_file(
                    session, metadata, schema, path, output, params.chunk_rows, version, partial(chunk_done, path)
                )
                for path in files
            ]
    seconds = time.perf_counter() - started
    outcome = BatchOutcome(
        model_name,
        version,
        str(output),
        len(files),
        done,
        sum(result.scored for result in results),
        sum(result.rejected for result in results),
        sum(result.written for result in results),
        sum(result.resumed for result in results),
        seconds,
        done / seconds,
        workers=dict(Counter(result.worker for result in results if result.worker)),
        peak_rss_mb=max((result.peak_rss_mb for result in results), default=0.0),
    )
    logger.info(
        "%s v%s: %d rows in %.1f s (%d scored, %d quarantined in %s/, %d part(s) resumed)",
        model_name,
        version,
        done,
        seconds,
        outcome.scored,
        outcome.rejected,
        REJECTED,
        outcome.parts_resumed,
    )
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.batch_score", description=__doc__)
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--version", default="champion")
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--dask", default=None, help=f"Dask scheduler address (default: {DASK_ADDRESS_ENV})")
    args = parser.parse_args(argv)
    params = BatchScoreParameters(
        input=args.input,
        output=args.output,
        version=args.version,
        chunk_rows=args.chunk_rows,
        threads=args.threads,
        dask_address=args.dask,
    )
    return print_outcome(lambda: batch_score_flow(params), "batch scoring")


if __name__ == "__main__":
    raise SystemExit(main())
