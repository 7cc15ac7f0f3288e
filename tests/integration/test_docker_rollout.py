"""The same rollout with the ``docker`` target: deployments are containers of the release images."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import mlflow
import pytest

from cli.traffic import BackgroundTraffic
from flows.release import ReleaseParameters, release_flow
from mlflow_server import MlflowServerConfig
from mlops.process import free_port
from mlops.settings import Settings
from serving.collector import requests_dir
from tasks.collected import load_requests
from tasks.endpoint_admin import start_endpoint, stop_endpoint
from tasks.image import ImageSpec
from tasks.ingest import accepted_frame
from tasks.registry import CHALLENGER, CHAMPION
from tasks.rollout import RolloutConfig
from tasks.targets import DockerTarget
from tests.integration.conftest import model_home

DOCKER = RolloutConfig(steps=[20, 100], bake_seconds=2.0, min_requests=15, p99_slack_ms=50.0, target="docker")


@pytest.fixture(scope="module")
def settings(
    docker_engine: Any,
    tmp_path_factory: pytest.TempPathFactory,
    mlflow_config: MlflowServerConfig,
    prefect_harness: None,
) -> Iterator[Settings]:
    trainings = (([0], CHAMPION), ([1, 2, 3], CHALLENGER))
    port = str(free_port())
    with model_home(tmp_path_factory, mlflow_config.url, "docked", trainings, MLOPS_ENDPOINT_PORT=port) as settings:
        try:
            yield settings
        finally:
            for deployment in start_endpoint(settings).table().deployments:
                DockerTarget(settings.tracking_uri).stop(deployment.name)
            stop_endpoint(settings)
            for image in docker_engine.images.list(name=ImageSpec().image_name(settings.model_name)):
                docker_engine.images.remove(image.id, force=True)


def test_containers_of_the_release_images_are_rolled_out(settings: Settings, docker_engine: Any) -> None:
    first = release_flow(ReleaseParameters(version=CHAMPION, rollout=DOCKER))
    assert (first.rollout, first.image) == ("nothing_to_do", f"mlops/{settings.model_name}:1")
    endpoint = start_endpoint(settings)
    frame = accepted_frame(settings.data_for())
    assert frame is not None
    rows = frame[list(settings.spec().feature_names)].to_numpy().tolist()
    load = BackgroundTraffic(
        f"{endpoint.url}/invocations", lambda rng: {"instances": [rows[rng.randrange(len(rows))]]}, 120, concurrency=4
    )
    with load:
        outcome = release_flow(ReleaseParameters(version=CHALLENGER, rollout=DOCKER))
    assert outcome.rollout == "promoted", outcome.message
    v1, v2 = (f"{settings.model_name}-v{version}" for version in "12")
    assert outcome.image == f"mlops/{settings.model_name}:2"
    assert load.result.server_errors == 0 and load.result.connection_errors == 0, load.result.errors[:3]
    assert load.result.deployments[v1] > 0 and load.result.deployments[v2] > 0
    assert [(d.name, d.weight) for d in endpoint.table().deployments] == [(v2, 100)]
    client = mlflow.MlflowClient(settings.tracking_uri)
    assert client.get_registered_model(settings.model_name).aliases == {CHAMPION: "2"}
    running = docker_engine.containers.list(filters={"label": f"mlops.model={settings.model_name}"})
    assert [(c.name, c.image.tags[0] if c.image.tags else "") for c in running] == [
        (f"mlops-{v2}", f"mlops/{settings.model_name}:2")
    ]
    # The containers collected what they scored where the monitor reads it, on the host.
    served = load_requests(requests_dir(settings.resolved_home, settings.model_name), since=0)
    assert set(served["model_version"]) == {"1", "2"}
    assert (served["model_version"] == "1").sum() == load.result.deployments[v1]  # v1 stopped: all flushed
