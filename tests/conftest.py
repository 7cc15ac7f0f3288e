"""Fixtures shared by every test tier: isolated settings, a real MLflow server, Prefect's harness."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from mlflow_server import MlflowServerConfig, start_mlflow, stop_mlflow
from mlops.settings import Settings, get_settings
from tasks.sample_data import diabetes_batches

QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "GX_ANALYTICS_ENABLED": "false",
}


def pytest_configure(config: pytest.Config) -> None:
    os.environ.update(QUIET_ENV)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def batches() -> list[pd.DataFrame]:
    """The four default diabetes batches."""
    return diabetes_batches()


@pytest.fixture
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings whose home, data and model name belong to this test alone."""
    name = f"model_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLOPS_MODEL_NAME", name)
    monkeypatch.setenv("MLOPS_EXPERIMENT_NAME", f"{name}-training")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def mlflow_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServerConfig]:
    """A real `mlflow server` on SQLite in a temp dir, artifacts proxied, for the whole session."""
    root: Path = tmp_path_factory.mktemp("mlflow")
    config = MlflowServerConfig(
        host="127.0.0.1",
        port=free_port(),
        backend_store_uri=f"sqlite:///{root / 'mlflow.db'}",
        artifacts_destination=str(root / "artifacts"),
        state_dir=root / "logs",
    )
    assert start_mlflow(config) is True
    yield config
    stop_mlflow(config)
