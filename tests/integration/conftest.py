"""Prefect's test harness, once per session, beside the session's real MLflow server."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prefect.testing.utilities import prefect_test_harness

from mlflow_server import MlflowServerConfig
from mlops.settings import Settings, get_settings
from tests.conftest import model_env


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


@pytest.fixture(scope="module")
def dask_cluster(prefect_harness: None) -> Iterator[str]:
    """``dask scheduler`` and ``dask worker`` (two single-threaded processes) on loopback, started as a user
    would, the workers pointed at the Prefect API; yields the scheduler's address."""
    from prefect.settings import PREFECT_API_URL

    from mlops.dask_cluster import dask_processes

    with dask_processes(2, {"PREFECT_API_URL": str(PREFECT_API_URL.value())}, preload=("tasks.batch_dask",)) as address:
        yield address


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


@contextmanager
def model_home(
    tmp_path_factory: pytest.TempPathFactory,
    tracking_uri: str,
    prefix: str,
    trainings: tuple[tuple[list[int], str], ...] = (([0, 1, 2, 3], "champion"),),
    base: str = "diabetes",
    **env: str,
) -> Iterator[Settings]:
    """A home and a model of its own (``<prefix>_<random>``, a copy of the shipped spec ``base``), trained
    by the real flow. Each training lands batches of the spec's example data, runs the flow, and must
    register the expected alias.
    """
    from flows.train import TrainParameters, train_flow
    from tasks.sample_data import land_batches

    values = {
        **model_env(tmp_path_factory.mktemp(f"{prefix}-home"), prefix, base),
        "MLFLOW_TRACKING_URI": tracking_uri,
        **env,
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in values.items():
            patch.setenv(key, value)
        get_settings.cache_clear()
        settings = get_settings()
        for batches, alias in trainings:
            land_batches(settings.landing_for(), batches, spec=None if base == "diabetes" else settings.spec())
            outcome = train_flow(TrainParameters())
            assert outcome.alias == alias, outcome.message
        yield settings
    get_settings.cache_clear()


def model_events(model_name: str, since: datetime, prefix: str, expected: set[str], timeout: float = 15.0) -> list[Any]:
    """The events named ``prefix*`` on the model (or its dataset) since ``since``, oldest first, once the
    ``expected`` names all arrived (or ``timeout`` passed: the caller's assertion then says what is missing)."""
    from tasks.events import read_events

    deadline = time.monotonic() + timeout
    while True:  # events reach the server asynchronously
        events = read_events([model_name], since, [prefix])
        if expected <= {event.event for event in events} or time.monotonic() > deadline:
            return [event for event in events if event.resource.id == f"mlops.model.{model_name}"]
        time.sleep(0.5)


def register_bundle(settings: Settings, onnx_bytes: bytes, metadata: Any, alias: str = "challenger") -> str:
    """Register ``onnx_bytes`` with ``metadata`` (a ``ModelMetadata``) as a new version of the settings' model,
    as the training flow stores a bundle (an artifact of a run, ``onnx_uri`` and ``onnx_sha256`` tags), and
    give it ``alias``. Returns the version."""
    import hashlib
    import tempfile
    from dataclasses import replace

    import mlflow

    from serving.bundle import write_bundle

    sha = hashlib.sha256(onnx_bytes).hexdigest()
    client = mlflow.MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.spec().experiment)
    assert experiment is not None
    run = client.create_run(experiment.experiment_id, tags={"purpose": "test bundle"})
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "onnx"
        write_bundle(folder, onnx_bytes, replace(metadata, version="unregistered", sha256=sha, run_id=run.info.run_id))
        client.log_artifacts(run.info.run_id, str(folder), "onnx")
    client.set_terminated(run.info.run_id)
    version = client.create_model_version(
        settings.model_name,
        f"runs:/{run.info.run_id}/onnx",
        run_id=run.info.run_id,
        tags={"onnx_uri": f"runs:/{run.info.run_id}/onnx", "onnx_sha256": sha, "validation_status": "passed"},
    )
    client.set_registered_model_alias(settings.model_name, alias, version.version)
    return str(version.version)


def send_with_ids(url: str, bodies: Iterable[dict[str, Any]]) -> list[str]:
    """POST each body to ``url`` with a request id of our own (what delayed labels refer to); every answer must be
    200. Returns the ids, once the server's collector had time to write them (it writes every 0.1 s)."""
    import uuid

    import httpx

    ids = []
    with httpx.Client(timeout=10) as session:
        for body in bodies:
            request_id = uuid.uuid4().hex
            answer = session.post(url, json=body, headers={"x-request-id": request_id})
            assert answer.status_code == 200, answer.text
            ids.append(request_id)
    time.sleep(0.5)
    return ids


def monitor_window(started: float) -> Any:
    """Monitor parameters judging exactly the requests served from ``started`` until now."""
    from datetime import UTC

    from flows.monitor import MonitorParameters

    ended = time.time()
    return MonitorParameters(window_minutes=(ended - started) / 60, window_end=datetime.fromtimestamp(ended, UTC))


def endpoint_traffic(settings: Settings, records: list[dict[str, Any]], max_seconds: float = 60) -> Any:
    """One-row ``/invocations`` requests from ``records`` to the model's endpoint, four at a time, in the
    background while a release runs (a context manager; its ``result`` counts what clients saw)."""
    from cli.traffic import BackgroundTraffic
    from tasks.endpoint_admin import endpoint_url

    return BackgroundTraffic(
        f"{endpoint_url(settings)}/invocations",
        lambda rng: {"dataframe_records": [records[rng.randrange(len(records))]]},
        max_seconds=max_seconds,
        concurrency=4,
    )
