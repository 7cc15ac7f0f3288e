"""Batch scoring: a CSV/Parquet file or folder scored by a registered version with onnxruntime.

    python -m flows.batch_score INPUT OUTPUT [--version champion] [--chunk-rows 50000]

The version's ONNX bundle (sha256-checked, the same file the servers run) scores the input in
chunks; every chunk becomes one Parquet part with the input's columns, ``prediction`` (a
classifier's label), for a classifier ``probability_<class>`` per class, ``model_version`` and
``request_id`` (see :mod:`tasks.batch` for the layout, resumption and
quarantined rows). Progress shows as a Prefect progress artifact and a log line per chunk.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from pydantic import BaseModel, Field

from flows.run_once import print_outcome
from mlops.settings import get_settings
from serving.model import is_matrix_regression, open_session
from serving.typed import TypedSchema
from tasks.batch import (
    REJECTED,
    Manifest,
    RowParallelSession,
    chunks,
    count_rows,
    fingerprint,
    input_files,
    open_output,
    part_path,
    score_chunk,
    write_part,
)
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
    schema = None if is_matrix_regression(metadata) else TypedSchema(metadata)

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
    done = scored = rejected = written = resumed = 0
    with RowParallelSession(open_session(str(model_file), 1), params.threads or os.cpu_count() or 1) as session:
        for path in files:
            first_row = 0
            for index, frame in enumerate(chunks(path, params.chunk_rows)):
                part = part_path(output, path, index)
                if part.exists():
                    resumed += 1
                else:
                    scorable, predictions, reasons = score_chunk(session, metadata, schema, frame, path.name)
                    rejected_part = output / REJECTED / f"{path.stem}-{part.name}"
                    good, bad = write_part(
                        frame, scorable, predictions, first_row, path, version, part, rejected_part, reasons
                    )
                    scored, rejected, written = scored + good, rejected + bad, written + 1
                first_row += len(frame)
                done += len(frame)
                update_progress_artifact(progress, 100.0 * done / max(total, 1))
                logger.info(
                    "%s part %d: %d/%d rows (%.0f%%)", path.name, index, done, total, 100.0 * done / max(total, 1)
                )
    seconds = time.perf_counter() - started
    outcome = BatchOutcome(
        model_name, version, str(output), len(files), done, scored, rejected, written, resumed, seconds, done / seconds
    )
    logger.info(
        "%s v%s: %d rows in %.1f s (%d scored, %d quarantined in %s/, %d part(s) resumed)",
        model_name,
        version,
        done,
        seconds,
        scored,
        rejected,
        REJECTED,
        resumed,
    )
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.batch_score", description=__doc__)
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--version", default="champion")
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    params = BatchScoreParameters(
        input=args.input, output=args.output, version=args.version, chunk_rows=args.chunk_rows, threads=args.threads
    )
    return print_outcome(lambda: batch_score_flow(params), "batch scoring")


if __name__ == "__main__":
    raise SystemExit(main())
