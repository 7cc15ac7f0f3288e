"""The training flow, run the README's way (`python -m flows.train`), against a real `prefect server start`.

This also guards the FastAPI pin: Prefect 3.8's server does not start on FastAPI >= 0.155.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from deployments.prefect_server import start_prefect, stop_prefect
from mlflow_server import MlflowServerConfig
from mlops.process import free_port
from mlops.settings import Settings
from tasks.sample_data import land_batches

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def prefect_settings(isolated_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("MLOPS_PREFECT_PORT", str(free_port()))
    settings = Settings()
    assert start_prefect(settings) is True
    yield settings
    stop_prefect(settings)


def test_flow_module_runs_against_a_real_prefect_server(
    prefect_settings: Settings, mlflow_config: MlflowServerConfig
) -> None:
    settings = prefect_settings
    land_batches(settings.landing_for(), [0, 1, 2])
    env = {
        **os.environ,
        "PREFECT_API_URL": settings.prefect_url,
        "MLFLOW_TRACKING_URI": mlflow_config.url,
        "PREFECT_HOME": str(settings.resolved_home / "prefect-client"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "flows.train"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"status": "registered"' in result.stdout

    runs = httpx.post(f"{settings.prefect_url}/flow_runs/filter", json={"limit": 10}).json()
    assert [(run["name"] != "", run["state_type"]) for run in runs] == [(True, "COMPLETED")]
    flows = httpx.post(f"{settings.prefect_url}/flows/filter", json={}).json()
    assert [flow["name"] for flow in flows] == ["train"]
    tasks = httpx.post(
        f"{settings.prefect_url}/task_runs/filter", json={"flow_runs": {"id": {"any_": [runs[0]["id"]]}}}
    ).json()
    assert {"validate_batch", "train_candidate", "register_candidate"} <= {
        task["task_key"].rsplit("-", 1)[0] for task in tasks
    }

    version = MlflowClient(mlflow_config.url).get_model_version_by_alias(settings.model_name, "champion")
    assert version.tags["prefect_flow_run_id"] == runs[0]["id"]
