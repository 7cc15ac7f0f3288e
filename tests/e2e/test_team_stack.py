"""The team setup's stores, run for real: MLflow on PostgreSQL (artifacts proxied) and the Prefect server on
PostgreSQL, with the training flow run against both the README's way (``python -m flows.train``).

PostgreSQL comes from Debian's packages: ``.ci/postgres start`` (what ``.ci/run`` does) and
``eval "$(.ci/postgres env)"`` set ``MLOPS_TEST_POSTGRES``. Without it the test skips and says so;
``MLOPS_REQUIRE_POSTGRES=1`` (set by ``.ci/run``) makes that a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg2
import pytest

from deployments.prefect_server import start_prefect, stop_prefect
from mlflow_server import MlflowServerConfig, start_mlflow, stop_mlflow
from mlops.process import free_port
from mlops.settings import Settings
from tasks.sample_data import land_batches

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def postgres() -> Iterator[tuple[str, str]]:
    """Two fresh databases (mlflow_<id>, prefect_<id>) on the test server; their names."""
    url = os.environ.get("MLOPS_TEST_POSTGRES")
    if not url:
        why = 'no PostgreSQL: run `.ci/postgres start` and `eval "$(.ci/postgres env)"` (Debian\'s postgresql)'
        if os.environ.get("MLOPS_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"MLOPS_REQUIRE_POSTGRES=1 but {why}")
        pytest.skip(why)
    suffix = uuid.uuid4().hex[:8]
    names = (f"mlflow_{suffix}", f"prefect_{suffix}")
    admin = psycopg2.connect(f"{url}/postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        for name in names:
            cursor.execute(f"create database {name}")
    try:
        yield url, suffix
    finally:
        with admin.cursor() as cursor:
            for name in names:
                cursor.execute(f"drop database if exists {name} with (force)")
        admin.close()


def count(url: str, database: str, sql: str) -> int:
    with psycopg2.connect(f"{url}/{database}") as connection, connection.cursor() as cursor:
        cursor.execute(sql)
        return int(cursor.fetchone()[0])


def test_the_training_flow_on_postgresql_backed_mlflow_and_prefect(
    postgres: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, suffix = postgres
    host_port = url.removeprefix("postgresql://")
    mlflow = MlflowServerConfig(
        host="127.0.0.1",
        port=free_port(),
        backend_store_uri=f"postgresql+psycopg2://{host_port}/mlflow_{suffix}",
        artifacts_destination=str(tmp_path / "artifacts"),
        state_dir=tmp_path / "logs",
    )
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLOPS_PREFECT_PORT", str(free_port()))
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", f"postgresql+asyncpg://{host_port}/prefect_{suffix}")
    settings = Settings()
    start_mlflow(mlflow)
    try:
        start_prefect(settings)
        try:
            land_batches(settings.landing_for(), [0, 1])
            env = {
                **os.environ,
                "PREFECT_API_URL": settings.prefect_url,
                "MLFLOW_TRACKING_URI": mlflow.url,
                "PREFECT_HOME": str(tmp_path / "prefect-client"),
            }
            result = subprocess.run(
                [sys.executable, "-m", "flows.train"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
            )
            assert result.returncode == 0, result.stderr[-3000:]
            runs = httpx.post(f"{settings.prefect_url}/flow_runs/filter", json={"limit": 10}).json()
        finally:
            stop_prefect(settings)
    finally:
        stop_mlflow(mlflow)
    # What the servers answered came from PostgreSQL: the rows are there, in both databases.
    assert [run["state_type"] for run in runs] == ["COMPLETED"]
    assert count(url, f"prefect_{suffix}", "select count(*) from flow_run where state_type = 'COMPLETED'") == 1
    assert count(url, f"prefect_{suffix}", "select count(*) from task_run") >= 8
    assert count(url, f"mlflow_{suffix}", "select count(*) from model_versions") == 1
    assert count(url, f"mlflow_{suffix}", "select count(*) from registered_model_aliases where alias = 'champion'") == 1
    assert (tmp_path / "artifacts").is_dir() and any((tmp_path / "artifacts").rglob("model.onnx"))
