"""Flow runs on a real Prefect Docker work pool: the flows image (``deployments/docker/flows.Dockerfile``)
is built here, Prefect's Docker worker (``prefect-docker``) runs the training, monitoring and batch-scoring
deployments as containers of it against the local engine, and they read and write through the MLflow
server and the shared home (mounted at the same path), like the process worker's runs.

Needs an engine (``.ci/docker-engine start``); skips without, except in CI (``MLOPS_REQUIRE_DOCKER=1``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from deployments.prefect_worker import PROJECT
from mlflow_server import MlflowServerConfig
from mlops.process import ManagedServer, free_port, start, stop
from mlops.settings import Settings
from tasks.ingest import accepted_frame
from tasks.sample_data import drifted, land_batches
from tasks.targets import ProcessTarget
from tests.conftest import model_env
from tests.integration.conftest import model_events, send_with_ids

TAG = "mlops-flows:test"
PREFECT = [sys.executable, "-m", "prefect"]
TEMPLATE = PROJECT / "deployments" / "work_pools" / "docker.json"
FLOWS = {
    "train": "flows/train.py:train_flow",
    "monitor-model": "flows/monitor.py:monitor_flow",
    "batch-score": "flows/batch_score.py:batch_score_flow",
}


@dataclass(frozen=True)
class Pool:
    name: str
    settings: Settings
    env: dict[str, str]
    engine: Any

    def run(self, flow: str, params: dict[str, Any]) -> Any:
        """Run ``<flow>/docker`` with ``params`` and wait; returns the finished flow run."""
        from prefect.deployments import run_deployment

        return run_deployment(f"{flow}/docker", parameters={"params": params}, timeout=900, poll_interval=1)

    def container_of(self, flow_run: Any) -> Any:
        """The container the Docker worker ran ``flow_run`` in (the worker labels it with the run's id)."""
        found = self.engine.containers.list(all=True, filters={"label": f"io.prefect.flow-run-id={flow_run.id}"})
        assert len(found) == 1, f"no container of flow run {flow_run.name}"
        return found[0]


@pytest.fixture(scope="module")
def flows_image(docker_engine: Any) -> str:
    from deployments.flows_image import build_flows_image

    started = time.monotonic()
    image_id = build_flows_image(Settings(), TAG)
    print(f"flows image {TAG} built in {time.monotonic() - started:.0f} s")
    return image_id


def pool_template(home_root: Path, env: dict[str, str]) -> dict[str, Any]:
    """``deployments/work_pools/docker.json`` with this machine's defaults: the local image, the host's
    network (the servers listen on loopback), the shared home at the same path, the host user."""
    template = json.loads(TEMPLATE.read_text())
    variables = template["variables"]["properties"]
    variables["image"]["default"] = TAG
    variables["image_pull_policy"]["default"] = "Never"
    variables["network_mode"]["default"] = "host"
    variables["volumes"]["default"] = [f"{home_root}:{home_root}"]
    variables["env"]["default"] = env
    variables["auto_remove"]["default"] = False
    variables["container_create_kwargs"]["default"] = {"user": f"{os.getuid()}:{os.getgid()}"}
    return template


@pytest.fixture(scope="module")
def pool(
    tmp_path_factory: pytest.TempPathFactory,
    flows_image: str,
    docker_engine: Any,
    mlflow_config: MlflowServerConfig,
    prefect_harness: None,
) -> Iterator[Pool]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL

    root = tmp_path_factory.mktemp("docker-pool")
    api = str(PREFECT_API_URL.value())
    name = f"mlops-docker-{uuid.uuid4().hex[:6]}"
    values = {**model_env(root, "docked"), "MLFLOW_TRACKING_URI": mlflow_config.url, "PREFECT_API_URL": api}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in values.items():
            patch.setenv(key, value)
        settings = Settings()
        with get_client(sync_client=True) as prefect:
            prefect.create_work_pool(
                WorkPoolCreate(name=name, type="docker", base_job_template=pool_template(root, values))
            )
        project = {
            "name": "docker-pool-test",
            "prefect-version": "3.8.8",
            "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/mlops"}}],
            "deployments": [
                {"name": "docker", "entrypoint": entrypoint, "work_pool": {"name": name}}
                for entrypoint in FLOWS.values()
            ],
        }
        project_file = root / "deployments.yaml"
        project_file.write_text(yaml.safe_dump(project))
        env = {**os.environ, **values}
        subprocess.run(
            [*PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", str(project_file)],
            cwd=PROJECT,
            env=env,
            check=True,
            capture_output=True,
            timeout=300,
        )
        port = free_port()
        worker = ManagedServer(
            name="docker-worker",
            command=[*PREFECT, "worker", "start", "--pool", name, "--type", "docker", "--with-healthcheck"],
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
        start(worker, timeout=120)
        try:
            yield Pool(name, settings, env, docker_engine)
        finally:
            stop(worker)
            for container in docker_engine.containers.list(all=True, filters={"ancestor": TAG}):
                container.remove(force=True)


def test_training_monitoring_and_batch_scoring_run_as_containers_of_the_flows_image(pool: Pool) -> None:
    settings, model = pool.settings, pool.settings.model_name
    land_batches(settings.landing_for(), [0, 1])
    trained = pool.run("train", {"model": model})
    assert trained.state.is_completed(), trained.state.message
    container = pool.container_of(trained)
    assert container.attrs["State"]["ExitCode"] == 0 and container.image.tags == [TAG]
    champion = MlflowClient(settings.tracking_uri).get_registered_model(model).aliases.get("champion")
    assert champion == "1"  # registered through the tracking server from inside the container
    assert not list(Path(settings.landing_for()).glob("*.csv"))  # the batches moved to the shared data folder

    # Batch scoring in a container: a Parquet file of the shared home in, scored parts out.
    frame = accepted_frame(settings.data_for())
    assert frame is not None
    features = list(settings.spec().feature_names)
    batch_in = settings.resolved_home / "batch-in"
    batch_in.mkdir()
    rows = pd.concat([frame[features]] * 3, ignore_index=True)
    rows.to_parquet(batch_in / "part-0.parquet")
    output = settings.resolved_home / "batch-out"
    scored = pool.run("batch-score", {"input": str(batch_in), "output": str(output), "model_name": model})
    assert scored.state.is_completed(), scored.state.message
    assert pool.container_of(scored).attrs["State"]["ExitCode"] == 0
    parts = sorted(output.rglob("*.parquet"))
    assert parts and sum(len(pd.read_parquet(part)) for part in parts) == len(rows)

    # Monitoring in a container: drifted requests the champion served on the host (collected into the
    # shared home), judged there.
    target = ProcessTarget(settings.tracking_uri, settings.resolved_home)
    url = target.start("v1", model, "1")
    try:
        since = datetime.now(UTC)
        matrix = drifted(frame.sample(300, replace=True, random_state=3))[features].to_numpy().tolist()
        send_with_ids(f"{url}/invocations", ({"instances": matrix[i : i + 10]} for i in range(0, len(matrix), 10)))
        judged = pool.run("monitor-model", {"model_name": model, "window_minutes": 10})
    finally:
        target.stop("v1")
    assert judged.state.is_completed(), judged.state.message
    assert pool.container_of(judged).attrs["State"]["ExitCode"] == 0
    assert model_events(model, since, "drift.", {"drift.detected"}, timeout=30)
