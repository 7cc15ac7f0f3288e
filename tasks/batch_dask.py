"""Batch scoring across a Dask cluster: one Prefect task per input file (a partition of the data set).

Each task runs on a Dask worker, fetches the version's ONNX bundle from MLflow once per worker process
(sha256-checked against the one the flow resolved), and scores its file exactly as the single-process path
does (:func:`tasks.batch.score_file`): the same parts, quarantine and request ids, and parts an earlier run
wrote whole are skipped, so a failed or interrupted run resumes. Inputs and the output folder must be
reachable by every worker under the same path (one machine, or a shared file system).
"""

from __future__ import annotations

import functools
import os
import resource
import socket
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import task

from serving.bundle import ModelMetadata
from serving.model import open_session
from serving.typed import TypedSchema
from tasks.batch import BatchScoreError, FileScores, batch_schema, score_file
from tasks.serving_bundle import fetch_bundle

DASK_ADDRESS_ENV = "MLOPS_DASK_ADDRESS"
CONNECT_SECONDS = 10  # a scheduler that answers at all answers in milliseconds


@functools.lru_cache(maxsize=4)
def _worker_model(tracking_uri: str, model_name: str, version: str) -> tuple[Any, ModelMetadata, TypedSchema | None]:
    """The version's session (one thread: a worker scores one file per Dask thread), fetched once per process."""
    bundle = Path(tempfile.gettempdir()) / "mlops-bundles" / f"{model_name}-{version}-{os.getuid()}"
    model_file, metadata = fetch_bundle(tracking_uri, f"models:/{model_name}/{version}", bundle)
    return open_session(str(model_file), 1), metadata, batch_schema(metadata)


@task(name="score-partition", task_run_name="score {path}")
def score_partition(
    tracking_uri: str, model_name: str, version: str, sha256: str, path: str, output: str, chunk_rows: int
) -> FileScores:
    """Score one input file on this worker; the bundle must be the one the flow resolved (``sha256``)."""
    session, metadata, schema = _worker_model(tracking_uri, model_name, version)
    if metadata.sha256 != sha256:
        raise BatchScoreError(
            f"worker {socket.gethostname()} fetched {model_name} v{version} with sha256 {metadata.sha256[:12]}, "
            f"not {sha256[:12]} as the flow did: the version's bundle changed during the run"
        )
    scores = score_file(session, metadata, schema, Path(path), Path(output), chunk_rows, version)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return replace(scores, worker=f"{socket.gethostname()}:{os.getpid()}", peak_rss_mb=round(peak_mb, 1))


def score_on_dask(
    address: str,
    tracking_uri: str,
    metadata: ModelMetadata,
    version: str,
    files: list[Path],
    output: Path,
    chunk_rows: int,
    finished: Callable[[Path, FileScores], None] | None = None,
) -> list[FileScores]:
    """Every file as a ``score-partition`` task on the Dask scheduler at ``address``; ``finished(path, scores)``
    as each one's result arrives (in the order of ``files``).

    Raises:
        BatchScoreError: No scheduler answers at ``address``.
        Exception: The first failed partition's error, once every partition ended (the others' parts stay
            written: running the flow again resumes).
    """
    from prefect_dask import DaskTaskRunner

    results: list[FileScores] = []
    errors: list[BaseException] = []
    with DaskTaskRunner(address=address, client_kwargs={"timeout": f"{CONNECT_SECONDS}s"}) as runner:
        try:
            runner.client  # noqa: B018  (connects: an unreachable scheduler is said here, before any task)
        except OSError as error:
            raise BatchScoreError(
                f"no Dask scheduler answers at {address} ({error}); start one (`dask scheduler`, then `dask worker "
                f"{address} --preload tasks.batch_dask`) or unset {DASK_ADDRESS_ENV} to score in this process"
            ) from error
        futures = [
            runner.submit(
                score_partition,
                {
                    "tracking_uri": tracking_uri,
                    "model_name": metadata.name,
                    "version": version,
                    "sha256": metadata.sha256,
                    "path": str(path),
                    "output": str(output),
                    "chunk_rows": chunk_rows,
                },
            )
            for path in files
        ]
        for path, future in zip(files, futures, strict=True):
            try:
                result = future.result()
            except Exception as error:  # every partition ends before the first error is raised
                errors.append(error)
                continue
            results.append(result)
            if finished is not None:
                finished(path, result)
    if errors:
        raise errors[0]
    return results
