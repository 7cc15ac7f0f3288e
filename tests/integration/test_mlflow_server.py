"""Starting the tracking server is idempotent and refuses a port owned by something else."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import httpx
import pytest

from mlflow_server import MlflowServerConfig, start_mlflow
from mlops.process import PortInUseError, free_port


def test_starting_twice_reuses_the_running_server(mlflow_config: MlflowServerConfig) -> None:
    assert start_mlflow(mlflow_config) is False
    assert httpx.get(f"{mlflow_config.url}/health").text == "OK"


def test_port_taken_by_another_program_is_a_clear_error(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        config = MlflowServerConfig(
            "127.0.0.1", server.server_port, f"sqlite:///{tmp_path}/db.sqlite", str(tmp_path / "art"), tmp_path
        )
        with pytest.raises(PortInUseError, match=rf"port {server.server_port} .* not a mlflow server"):
            start_mlflow(config)
        assert not (tmp_path / "mlflow.pid").exists()
    finally:
        server.shutdown()


def test_postgres_and_s3_stores_are_passed_through(tmp_path: Path) -> None:
    from mlflow_server.server import mlflow_server

    config = MlflowServerConfig(
        "127.0.0.1", 5000, "postgresql+psycopg2://mlflow:pw@db:5432/mlflow", "s3://models/mlflow", tmp_path
    )
    command = list(mlflow_server(config).command)
    assert command[command.index("--backend-store-uri") + 1] == "postgresql+psycopg2://mlflow:pw@db:5432/mlflow"
    assert command[command.index("--artifacts-destination") + 1] == "s3://models/mlflow"
    assert "--serve-artifacts" in command
