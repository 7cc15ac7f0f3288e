"""A real ``mlflow server`` on SQLite in a temp dir and Prefect's test harness, once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from mlflow_server import MlflowServerConfig, start_mlflow, stop_mlflow
from mlops.settings import Settings, get_settings
from tests.conftest import free_port


@pytest.fixture(scope="session")
def mlflow_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServerConfig]:
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


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def stack(
    isolated_settings: Settings, mlflow_config: MlflowServerConfig, prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Isolated settings pointed at the session's MLflow server, inside the Prefect harness."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_config.url)
    get_settings.cache_clear()
    return get_settings()
