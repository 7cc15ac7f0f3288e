"""Small helpers shared by the tasks that talk to the MLflow tracking server."""

from __future__ import annotations

import mlflow
from mlflow.tracking import MlflowClient


def client(tracking_uri: str) -> MlflowClient:
    """A client bound to one server; ``mlflow.*`` fluent calls are pointed there too."""
    mlflow.set_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def version_url(tracking_uri: str, model_name: str, version: str) -> str:
    return f"{tracking_uri.rstrip('/')}/#/models/{model_name}/versions/{version}"
