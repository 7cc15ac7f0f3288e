"""The loop on a real Prefect Docker work pool: every flow run is a container of the flows image.

The flows image (``deployments/docker/flows.Dockerfile``) is built here; the team's deployments
(``deployments/prefect.team.yaml`` plus each model's, on a pool made from ``work_pools/docker.json``) are
registered with ``prefect deploy`` on a real ``prefect server start`` with the loop's automations, and
Prefect's Docker worker (``prefect-docker``) runs them against the local engine. The runs read and write
through the MLflow server and the shared home (mounted at the same path); the release flow reaches the
engine through its socket, so the serving images, the router and the canaries it starts are containers
beside it that outlive its own (``MLOPS_ENDPOINT_RUNTIME=docker``). The model is the example classifier on a
mixed-type table (strings, gaps, an id column), so the images, the batch output and the monitor handle more
than numbers.

Needs an engine (``.ci/docker-engine start``); skips without, except in CI (``MLOPS_REQUIRE_DOCKER=1``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from cli.stack import down
from cli.traffic import BackgroundTraffic
from deployments.automations import apply_loop_automations
from deployments.model_deployments import write_deployment_file
from deployments.prefect_server import start_prefect
from deployments.prefect_worker import PROJECT
from mlflow_server import MlflowServerConfig
from mlops.process import ManagedServer, free_port, start, stop
from mlops.settings import Settings
from serving.collector import requests_dir
from tasks.collected import load_requests
from tasks.endpoint_admin import EndpointClient, admin_token, endpoint_url
from tasks.events import read_events
from tasks.image import ImageSpec
from tasks.ingest import accepted_frame
from tasks.lineage import git_commit
from tasks.router_container import container_name
from tasks.sample_data import TUMOUR_MEASUREMENTS, client_records, drifted, land_batches
from tasks.targets import DockerTarget
from tests.conftest import model_env, own_prefect_env
from tests.integration.conftest import model_events

TAG = "mlops-flows:test"
PREFECT = [sys.executable, "-m", "prefect"]
TEMPLATE = PROJECT / "deployments" / "work_pools" / "docker.json"
TEAM = PROJECT / "deployments" / "prefect.team.yaml"
ROLLOUT = {
    "target": "docker",
    "steps": [50, 100],
    "bake_seconds": 2,
    "min_requests": 10,
    "p99_slack_ms": 250,
    "compare_predictions": False,
}
# Passed on to the flow containers: where the engine is, and what the serving image builds need here.
PASSED_ON = ("DOCKER_HOST", "MLOPS_IMAGE_BASE", "MLOPS_IMAGE_CA_CERTS", "MLOPS_IMAGE_PIP_INDEX_URL")


@dataclass(frozen=True)
class Pool:
    name: str
    settings: Settings
    engine: Any

    def run(self, deployment: str, parameters: dict[str, Any]) -> Any:
        """Run ``deployment`` with ``parameters`` and wait; returns the finished flow run."""
        from prefect.deployments import run_deployment

        return run_deployment(deployment, parameters=parameters, timeout=900, poll_interval=1)

    def container_of(self, flow_run: Any) -> Any:
        """The container the Docker worker ran ``flow_run`` in (the worker labels it with the run's id)."""
        found = self.engine.containers.list(all=True, filters={"label": f"io.prefect.flow-run-id={flow_run.id}"})
        assert len(found) == 1, f"no container of flow run {flow_run.name}"
        return found[0]

    def ran_in_a_container(self, flow_run: Any) -> None:
        assert flow_run.state.is_completed(), f"{flow_run.name}: {flow_run.state.message}"
        container = self.container_of(flow_run)
        assert container.attrs["State"]["ExitCode"] == 0 and container.image.tags == [TAG]


@pytest.fixture(scope="module")
def flows_image(docker_engine: Any) -> str:
    from deployments.flows_image import build_flows_image

    started = time.monotonic()
    image_id = build_flows_image(Settings(), TAG)
    print(f"flows image {TAG} built in {time.monotonic() - started:.0f} s")
    return image_id


def pool_template(mounts: list[str], env: dict[str, str]) -> dict[str, Any]:
    """``deployments/work_pools/docker.json`` with this machine's defaults: the local image, the host's
    network (the servers listen on loopback), the shared home and the engine's socket at the same paths,
    the host user."""
    import json

    template = json.loads(TEMPLATE.read_text())
    variables = template["variables"]["properties"]
    variables["image"]["default"] = TAG
    variables["image_pull_policy"]["default"] = "Never"
    variables["network_mode"]["default"] = "host"
    variables["volumes"]["default"] = [f"{path}:{path}" for path in mounts]
    variables["env"]["default"] = env
    variables["auto_remove"]["default"] = False
    variables["container_create_kwargs"]["default"] = {"user": f"{os.getuid()}:{os.getgid()}"}
    return template


def team_deployments(settings: Settings, pool: str, output: Path) -> Path:
    """``prefect.team.yaml`` plus each model's deployments, on ``pool`` instead of the Kubernetes one."""
    project = yaml.safe_load(TEAM.read_text())
    for deployment in project["deployments"]:
        deployment["work_pool"] = {**deployment["work_pool"], "name": pool}
    base = output.with_name("team-on-docker.yaml")
    base.write_text(yaml.safe_dump(project, sort_keys=False))
    return write_deployment_file(settings, base, output)


@pytest.fixture(scope="module")
def pool(
    tmp_path_factory: pytest.TempPathFactory, flows_image: str, docker_engine: Any, mlflow_config: MlflowServerConfig
) -> Iterator[Pool]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = tmp_path_factory.mktemp("docker-pool")
    name = f"mlops-docker-{uuid.uuid4().hex[:6]}"
    values = {
        **model_env(root, "docked", base="tumours"),  # the mixed-type classifier: strings, gaps, ids
        "MLFLOW_TRACKING_URI": mlflow_config.url,
        "MLOPS_PREFECT_PORT": str(free_port()),
        "MLOPS_ENDPOINT_PORT": str(free_port()),
        "MLOPS_ENDPOINT_RUNTIME": "docker",
        "MLOPS_FLOWS_IMAGE": TAG,
        **own_prefect_env(root),  # the test starts the landing check itself
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in values.items():
            patch.setenv(key, value)
        settings = Settings()
        api = settings.prefect_url
        patch.setenv("PREFECT_API_URL", api)
        start_prefect(settings)
        try:
            with temporary_settings(updates={PREFECT_API_URL: api}):
                passed_on = {key: os.environ[key] for key in PASSED_ON if os.environ.get(key)}
                mounts = [str(root)]
                if passed_on.get("DOCKER_HOST", "").startswith("unix://"):
                    mounts.append(passed_on["DOCKER_HOST"].removeprefix("unix://"))
                else:  # the engine's default socket
                    mounts.append("/var/run/docker.sock")
                if "MLOPS_IMAGE_CA_CERTS" in passed_on:
                    mounts.append(passed_on["MLOPS_IMAGE_CA_CERTS"])
                env = {**values, **passed_on, "PREFECT_API_URL": api}
                with get_client(sync_client=True) as prefect:
                    prefect.create_work_pool(
                        WorkPoolCreate(name=name, type="docker", base_job_template=pool_template(mounts, env))
                    )
                project_file = team_deployments(settings, name, root / "deployments.yaml")
                subprocess.run(
                    [*PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", str(project_file)],
                    cwd=PROJECT,
                    env={**os.environ},
                    check=True,
                    capture_output=True,
                    timeout=300,
                )
                with docker_worker(name, api, root):
                    yield Pool(name, settings, docker_engine)
        finally:
            down(settings)  # the router and deployment containers, and the Prefect server
            for container in docker_engine.containers.list(all=True, filters={"ancestor": TAG}):
                container.remove(force=True)
            for image in docker_engine.images.list(name=ImageSpec().image_name(settings.model_name)):
                docker_engine.images.remove(image.id, force=True)  # the serving images the releases built


@contextmanager
def docker_worker(pool: str, api: str, root: Path) -> Iterator[ManagedServer]:
    """Prefect's Docker worker on ``pool``, polling every second."""
    port = free_port()
    server = ManagedServer(
        name="docker-worker",
        command=[*PREFECT, "worker", "start", "--pool", pool, "--type", "docker", "--with-healthcheck"],
        host="127.0.0.1",
        port=port,
        health_path="/health",
        is_expected=lambda body: '"OK"' in body,
        state_dir=root / "logs",
        env={
            "PREFECT_API_URL": api,
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
            "PREFECT_WORKER_WEBSERVER_PORT": str(port),
        },
    )
    start(server, timeout=120)
    try:
        yield server
    finally:
        stop(server)


def test_the_loop_runs_as_containers_of_the_flows_image(pool: Pool) -> None:
    settings, model, engine = pool.settings, pool.settings.model_name, pool.engine
    mlflow = MlflowClient(settings.tracking_uri)
    spec = settings.spec()
    land_batches(settings.landing_for(), [0], spec=spec)
    pool.ran_in_a_container(pool.run(f"train/{model}", {"params": {"model": model}}))
    assert mlflow.get_registered_model(model).aliases.get("champion") == "1"  # registered from the container
    assert mlflow.get_model_version(model, "1").tags["git_commit"] == git_commit()  # baked into the image
    assert not list(Path(settings.landing_for()).glob("*.csv"))  # the batch moved to the shared data folder

    # The release puts the champion behind the endpoint: its image, the router and the deployment are
    # containers started through the engine's socket, and they outlive the release's own container.
    release = {"params": {"version": "champion", "rollout": ROLLOUT}}
    pool.ran_in_a_container(pool.run("release/challenger", release))
    router = engine.containers.get(container_name(model))
    assert router.status == "running" and router.labels["mlops.home"] == str(settings.resolved_home)
    endpoint = endpoint_url(settings)
    assert endpoint is not None
    table = EndpointClient(endpoint, admin_token(settings)).table()
    assert [deployment.version for deployment in table.deployments] == ["1"], table

    # Batch scoring in a container: a Parquet file of the shared home in, scored parts out.
    frame = accepted_frame(settings.data_for())
    assert frame is not None
    features = list(spec.feature_names)
    batch_in = settings.resolved_home / "batch-in"
    batch_in.mkdir()
    rows = pd.concat([frame[features]] * 3, ignore_index=True)
    rows.to_parquet(batch_in / "part-0.parquet")
    output = settings.resolved_home / "batch-out"
    scoring = {"params": {"input": str(batch_in), "output": str(output), "model_name": model}}
    pool.ran_in_a_container(pool.run("batch-score/on-demand", scoring))
    parts = sorted(output.rglob("*.parquet"))
    assert parts and sum(len(pd.read_parquet(part)) for part in parts) == len(rows)

    # The world changed: 6 of the 10 inputs shifted (the numeric measurements); strings and gaps as in training.
    records = client_records(drifted(frame, columns=TUMOUR_MEASUREMENTS)[features])
    body = lambda rng: {"dataframe_records": [records[rng.randrange(len(records))]]}  # noqa: E731
    with BackgroundTraffic(f"{endpoint}/invocations", body, max_seconds=600, concurrency=2, pause=0.01) as traffic:
        _wait("200 served requests", lambda: traffic.result.requests >= 200, timeout=60)
        # The monitor in a container judges what the champion's container collected into the shared home.
        since = datetime.now(UTC)
        judged = pool.run(f"monitor-model/{model}", {"params": {"model_name": model, "window_minutes": 10}})
        pool.ran_in_a_container(judged)
        assert model_events(model, since, "drift.", {"drift.detected"}, timeout=30)

        # From here on only the automations act: new data, announced by the landing check in a container,
        # is trained on, and the challenger released, as containers.
        apply_loop_automations(settings, release_parameters={"params": {"version": "challenger", "rollout": ROLLOUT}})
        land_batches(settings.landing_for(), [1, 2, 3], spec=spec)
        clock = time.monotonic()
        pool.ran_in_a_container(pool.run("landing/check", {"model": model}))
        _wait("the challenger to be promoted", lambda: _champion(mlflow, model) == "2", timeout=600)
        loop_seconds = time.monotonic() - clock
        _wait("v2 to serve", lambda: traffic.result.deployments.get(f"{model}-v2", 0) >= 20, timeout=60)
    print(f"data landed -> challenger at 100 % on the Docker pool: {loop_seconds:.0f} s")
    assert traffic.result.connection_errors == 0 and traffic.result.server_errors == 0, traffic.result.errors[:3]

    from prefect.client.orchestration import get_client

    def names() -> list[str]:
        return [event.event for event in read_events([model], since, ["drift.", "data.", "model.", "rollout."])]

    _wait("the rollout.promoted event", lambda: "rollout.promoted" in names(), timeout=30)  # events lag a little
    events = names()
    chain = ["drift.detected", "data.landed", "data.accepted", "model.registered", "rollout.started"]
    chain.append("rollout.promoted")
    firsts = [name for index, name in enumerate(events) if name in chain and name not in events[:index]]
    assert firsts == chain, events

    with get_client(sync_client=True) as prefect:
        runs = {run.id: run for run in prefect.read_flow_runs()}
        names = {prefect.read_deployment(run.deployment_id).name for run in runs.values() if run.deployment_id}
    assert {"triggered", "challenger", "check"} <= names  # the automations' runs, on the team's deployments
    for run in runs.values():
        pool.ran_in_a_container(run)
    assert sorted(DockerTarget(settings.tracking_uri, home=settings.resolved_home).running()) == [f"{model}-v2"]
    # The deployment containers collected what they served where the monitor reads it; v1's container was
    # stopped by the promotion (SIGTERM), so every request it served was flushed.
    served = load_requests(requests_dir(settings.resolved_home, model), since=0)
    assert set(served["model_version"]) == {"1", "2"}
    assert (served["model_version"] == "1").sum() == traffic.result.deployments[f"{model}-v1"]


def _champion(mlflow: MlflowClient, model: str) -> str | None:
    return mlflow.get_registered_model(model).aliases.get("champion")


def _wait(what: str, ready: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)
