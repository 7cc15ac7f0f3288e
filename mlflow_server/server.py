"""Start, reuse and stop a real ``mlflow server``.

Embedded default: a SQLite backend store and a local artifact folder, with artifacts
proxied by the server (clients only ever talk HTTP to it). For a team the same code takes
a PostgreSQL URI (``postgresql+psycopg2://user:pw@host/db``) as backend store and an
S3-compatible artifact destination (``s3://bucket/prefix``, with ``MLFLOW_S3_ENDPOINT_URL``
and AWS credentials in the environment; needs ``boto3``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from mlops.process import ManagedServer, start, stop
from mlops.settings import Settings


@dataclass(frozen=True)
class MlflowServerConfig:
    """How to run the tracking server.

    Attributes:
        host: Interface to bind (loopback by default).
        port: Port to bind.
        backend_store_uri: SQLAlchemy URI of the tracking and registry store.
        artifacts_destination: Local folder or object-store URI behind the artifact proxy.
        state_dir: Folder for the pid file and log.
        workers: Server worker processes.
    """

    host: str
    port: int
    backend_store_uri: str
    artifacts_destination: str
    state_dir: Path
    workers: int = 1

    @classmethod
    def from_settings(cls, settings: Settings) -> MlflowServerConfig:
        return cls(
            host=settings.mlflow_host,
            port=settings.mlflow_port,
            backend_store_uri=settings.backend_store_uri,
            artifacts_destination=settings.artifacts_destination,
            state_dir=settings.logs_dir,
        )

    @classmethod
    def scratch(cls, root: Path, port: int) -> MlflowServerConfig:
        """A throwaway loopback server whose SQLite store, artifacts and logs all live under ``root``."""
        return cls(
            host="127.0.0.1",
            port=port,
            backend_store_uri=f"sqlite:///{root / 'mlflow.db'}",
            artifacts_destination=str(root / "artifacts"),
            state_dir=root / "logs",
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _ensure_local_folders(config: MlflowServerConfig) -> None:
    """Create the folders a local SQLite store and artifact root need; remote stores need none."""
    backend = urlparse(config.backend_store_uri)
    if backend.scheme == "sqlite" and config.backend_store_uri.startswith("sqlite:///"):
        Path(config.backend_store_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    artifacts = urlparse(config.artifacts_destination)
    if artifacts.scheme in ("", "file"):
        Path(artifacts.path if artifacts.scheme else config.artifacts_destination).mkdir(parents=True, exist_ok=True)


def mlflow_server(config: MlflowServerConfig) -> ManagedServer:
    """The managed-process description of the tracking server."""
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        config.host,
        "--port",
        str(config.port),
        "--backend-store-uri",
        config.backend_store_uri,
        "--artifacts-destination",
        config.artifacts_destination,
        "--serve-artifacts",
        "--workers",
        str(config.workers),
    ]
    return ManagedServer(
        name="mlflow",
        command=command,
        host=config.host,
        port=config.port,
        health_path="/health",
        is_expected=lambda body: body.strip() == "OK",
        state_dir=config.state_dir,
        env={
            "MLFLOW_ENABLE_TELEMETRY": "false",
            "DO_NOT_TRACK": "true",
            # MLflow 3's job runner (GenAI jobs, trace rollups; none used here) adds 8 processes and
            # delays the first answer: ready in 11 s instead of 14-19 s here (bench/mlflow_start.py).
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        },
    )


def start_mlflow(config: MlflowServerConfig, timeout: float = 120.0) -> bool:
    """Start the tracking server, or reuse the one already answering at its URL.

    Returns:
        True if a server was started, False if a running one was reused.
    """
    _ensure_local_folders(config)
    return start(mlflow_server(config), timeout=timeout)


def stop_mlflow(config: MlflowServerConfig) -> bool:
    """Stop the tracking server this project started (by its pid file)."""
    return stop(mlflow_server(config))
