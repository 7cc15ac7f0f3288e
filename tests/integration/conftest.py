"""Prefect's test harness, once per session, beside the session's real MLflow server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from prefect.testing.utilities import prefect_test_harness

from mlflow_server import MlflowServerConfig
from mlops.settings import Settings, get_settings


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def stack(
    isolated_settings: Settings,
    mlflow_config: MlflowServerConfig,
    prefect_harness: None,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    """Isolated settings pointed at the session's MLflow server, inside the Prefect harness."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_config.url)
    get_settings.cache_clear()
    return get_settings()


REQUIRE_DOCKER = "MLOPS_REQUIRE_DOCKER"


@pytest.fixture(scope="session")
def docker_engine() -> Any:
    """A client of a running Docker engine; skips without one, fails instead when MLOPS_REQUIRE_DOCKER=1 (CI)."""
    from tasks.docker_engine import EngineUnavailable, connect

    try:
        return connect()
    except EngineUnavailable as error:
        if os.environ.get(REQUIRE_DOCKER) == "1":
            pytest.fail(f"{REQUIRE_DOCKER}=1 but {error}")
        pytest.skip(f"image tests need a Docker engine and none could be reached: {error}")
