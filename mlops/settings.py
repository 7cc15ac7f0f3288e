"""Infrastructure settings: one class, read from the environment, behind a cached getter.

What varies per run is a flow parameter; what varies per deployment sits in
``prefect.yaml``; what this class holds is where things live and how to reach them.
Nothing here runs at import time.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlops.spec import ModelSpec, load_spec

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    """Where data, servers and models live. Every field is overridable as ``MLOPS_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="MLOPS_", extra="ignore")

    home: Path = Field(
        default=Path(".mlops"),
        description="Root folder of the embedded defaults: data, server stores, logs.",
    )
    landing_uri: str | None = Field(
        default=None, description="Folder or fsspec URI new batches land in (default: <home>/landing)."
    )
    data_uri: str | None = Field(
        default=None,
        description="Folder or fsspec URI for snapshots, processed and quarantined batches (default: <home>/data).",
    )
    requests_uri: str | None = Field(
        default=None,
        description="fsspec URI (s3://bucket/requests) the serving hosts ship finished collection files to "
        "(`mlops ship-requests`), <uri>/<model>, and the monitor reads them from (default: <home>/requests).",
    )
    models_dir: Path | None = Field(
        default=None, description="Folder of the model specs, <name>.yaml each (default: models/ of this project)."
    )
    model_name: str = Field(
        default="diabetes", description="The model a command works on when it is given none (--model overrides)."
    )

    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "MLOPS_MLFLOW_TRACKING_URI"),
        description="Tracking server the flows talk to (default: the embedded server's URL).",
    )
    mlflow_host: str = "127.0.0.1"
    mlflow_port: int = 5000
    mlflow_backend_store_uri: str | None = Field(
        default=None, description="SQLAlchemy URI of the tracking store (default: SQLite under <home>/mlflow)."
    )
    mlflow_artifacts_destination: str | None = Field(
        default=None,
        description="Where the server stores the artifacts it proxies "
        "(default: <home>/mlflow/artifacts; s3://... for teams).",
    )

    prefect_api_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("PREFECT_API_URL", "MLOPS_PREFECT_API_URL"),
        description="Prefect API the flows report to (default: the embedded server's URL).",
    )
    prefect_host: str = "127.0.0.1"
    prefect_port: int = 4200
    worker_port: int = Field(default=4201, description="Health check port of the local process worker.")
    worker_query_seconds: float = Field(default=0.25, gt=0, description="How often the worker asks for runs to start.")
    watcher_port: int = Field(default=4202, description="Health check port of the landing watcher.")
    watch_seconds: float = Field(default=0.5, gt=0, description="How often the landing watcher lists the landing.")

    endpoint_host: str = "127.0.0.1"
    endpoint_port: int = Field(default=8000, description="Port of the model's endpoint (the router).")
    endpoint_admin_token: str | None = Field(
        default=None,
        description="Bearer token of the router's admin API (default: generated once into <home>/endpoint/).",
    )
    endpoint_runtime: Literal["process", "docker"] = Field(
        default="process",
        description="How the release starts a model's router: a detached process (flow runs are processes), "
        "or a container of the serving image it released (flow runs are containers: the Docker pool).",
    )

    image_repository: str = Field(
        default="mlops", description="Serving images are tagged <repository>/<model>:<version> and :git-<sha>."
    )
    image_registry: str | None = Field(
        default=None,
        description="Registry host[:port][/namespace] to push serving images to (default: build locally, no push).",
    )
    image_base: str = Field(
        default="python:3.11-slim", description="Base image of the serving image (any Debian-like Python 3.11)."
    )
    image_ca_certs: Path | None = Field(
        default=None,
        description="A .crt file or folder of them that pip trusts while building (TLS-intercepting proxies); "
        "used in the build stage only, never in the image.",
    )
    image_pip_index_url: str | None = Field(
        default=None, description="Package index the image build installs from (default: PyPI)."
    )
    notify_webhook_url: str | None = Field(
        default=None,
        description="Webhook that data rejections and rollbacks are posted to (JSON: subject, body); none: no notice.",
    )
    retrain_cooldown_minutes: float = Field(
        default=60.0, gt=0, description="After drift or degradation starts a retraining, later alarms wait this long."
    )
    landing_cooldown_minutes: float = Field(
        default=10.0, gt=0, description="After new data started a training, the landing check waits this long."
    )

    @property
    def resolved_home(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def landing(self) -> str:
        return self.landing_uri or str(self.resolved_home / "landing")

    @property
    def data(self) -> str:
        return self.data_uri or str(self.resolved_home / "data")

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"http://{self.mlflow_host}:{self.mlflow_port}"

    @property
    def backend_store_uri(self) -> str:
        return self.mlflow_backend_store_uri or f"sqlite:///{self.resolved_home / 'mlflow' / 'mlflow.db'}"

    @property
    def artifacts_destination(self) -> str:
        return self.mlflow_artifacts_destination or str(self.resolved_home / "mlflow" / "artifacts")

    @property
    def prefect_url(self) -> str:
        return self.prefect_api_url or f"http://{self.prefect_host}:{self.prefect_port}/api"

    @property
    def specs_dir(self) -> Path:
        return (self.models_dir or PROJECT_ROOT / "models").expanduser().resolve()

    def spec(self, model: str | None = None) -> ModelSpec:
        """The spec of ``model`` (default: ``model_name``) from the models folder.

        Raises:
            SpecError: No such spec, or it is invalid.
        """
        return load_spec(model or self.model_name, self.specs_dir)

    def landing_for(self, model: str | None = None) -> str:
        """Where ``model``'s batches land (its spec's ``data.landing``, else ``<landing>/<model>``)."""
        return self.spec(model).landing_uri(self.landing)

    def data_for(self, model: str | None = None) -> str:
        """Where ``model``'s snapshots, ledger, processed and quarantined batches live."""
        return self.spec(model).data_uri(self.data)

    def requests_for(self, model: str | None = None) -> str:
        """Where the monitor reads ``model``'s collected requests: ``<requests_uri>/<model>``, else the folder its
        deployments here collect into (``<home>/requests/<model>``)."""
        name = model or self.model_name
        if self.requests_uri:
            return f"{self.requests_uri.rstrip('/')}/{name}"
        return str(self.resolved_home / "requests" / name)

    @property
    def logs_dir(self) -> Path:
        return self.resolved_home / "logs"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; ``get_settings.cache_clear()`` re-reads the environment."""
    return Settings()
