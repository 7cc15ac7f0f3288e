"""Small helpers shared by the tasks that talk to the MLflow tracking server."""

from __future__ import annotations

import os

import httpx
import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import task

# MLflow's HTTP client retries each call 7 times with a doubling backoff and waits up to 120 s per try: a call
# to a stopped server hung a training run for over 5 minutes. Bounded (unless set already): about 10 s.
CLIENT_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def client(tracking_uri: str) -> MlflowClient:
    """A client bound to one server, its retries bounded (``CLIENT_BOUNDS``); ``mlflow.*`` fluent calls are pointed
    there too."""
    for name, value in CLIENT_BOUNDS.items():
        os.environ.setdefault(name, value)  # read by MLflow on every request
    mlflow.set_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


def describe_failure(tracking_uri: str, error: Exception) -> str:
    """What an MLflow call's failure really was: the tracking server unreachable, or MLflow's own first line."""
    try:
        check_tracking_server.fn(tracking_uri)  # the check itself, not a task run of its own
    except TrackingServerUnavailable as unavailable:
        return f"tracking server unreachable: {unavailable}"
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


def alias_version(tracking_uri: str, model_name: str, alias: str) -> str | None:
    """The version an alias points to; None if the model or the alias does not exist."""
    try:
        return str(client(tracking_uri).get_model_version_by_alias(model_name, alias).version)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def version_url(tracking_uri: str, model_name: str, version: str) -> str:
    return f"{tracking_uri.rstrip('/')}/#/models/{model_name}/versions/{version}"


class TrackingServerUnavailable(RuntimeError):
    """The MLflow tracking server does not answer."""


@task(retries=2, retry_delay_seconds=2)
def check_tracking_server(tracking_uri: str) -> None:
    """Fail fast, with what to do, when an HTTP tracking server does not answer its health check.

    MLflow's own client would otherwise retry each call for minutes before failing.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        response = httpx.get(f"{tracking_uri.rstrip('/')}/health", timeout=5.0)
    except httpx.HTTPError as error:
        raise TrackingServerUnavailable(
            f"MLflow tracking server not reachable at {tracking_uri} ({error}); start it with "
            "`uv run mlops up` or point MLFLOW_TRACKING_URI at a running server"
        ) from error
    if response.status_code != 200:
        raise TrackingServerUnavailable(
            f"MLflow tracking server at {tracking_uri} answered /health with HTTP {response.status_code}"
        )


def last_run(tracking_uri: str, experiment: str) -> dict[str, str] | None:
    """The newest run of ``experiment``: name, status, start time (UTC) and outcome; None without one."""
    from datetime import UTC, datetime

    tracker = client(tracking_uri)
    found = tracker.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = tracker.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    run = runs[0]
    started = datetime.fromtimestamp(run.info.start_time / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return {
        "run": run.info.run_name or run.info.run_id,
        "status": run.info.status,
        "started": started,
        "outcome": run.data.tags.get("outcome", ""),
    }
