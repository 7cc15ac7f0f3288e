"""Object storage for real: landing, data snapshots and MLflow's artifacts on an S3-compatible server on loopback.

Object storage lives outside the machine in production; moto's S3 server (a separate process, real HTTP, the
S3 API) stands in for it. The flows reach it through fsspec ``s3://`` URIs and the tracking server through
boto3, both pointed at it by ``AWS_ENDPOINT_URL_S3`` (``MLFLOW_S3_ENDPOINT_URL`` for the server too).
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pandas as pd
import pytest

from mlflow_server import MlflowServerConfig, start_mlflow, stop_mlflow
from mlops.process import free_port
from mlops.settings import Settings
from tasks.registry import CHALLENGER, CHAMPION
from tests.conftest import wait_ready
from tests.integration.conftest import model_home

BUCKET = "mlops"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """``python -m moto.server`` on loopback with one bucket; the environment points S3 clients at it."""
    import boto3

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(  # a line per request: not piped, a full pipe would stall it
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    credentials = {
        "AWS_ACCESS_KEY_ID": "mlops-test",
        "AWS_SECRET_ACCESS_KEY": "mlops-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": url,
        "MLFLOW_S3_ENDPOINT_URL": url,
    }
    try:
        wait_ready(process, f"{url}/moto-api/")
        with pytest.MonkeyPatch.context() as patch:
            for key, value in credentials.items():
                patch.setenv(key, value)
            boto3.client("s3").create_bucket(Bucket=BUCKET)
            yield url
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture(scope="module")
def stored(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Iterator[Settings]:
    """A tracking server whose artifacts live in the bucket, and a model whose batches land and are kept there,
    trained twice by the real flow (champion, then challenger)."""
    root = tmp_path_factory.mktemp("mlflow-s3")
    config = replace(MlflowServerConfig.scratch(root, free_port()), artifacts_destination=f"s3://{BUCKET}/mlflow")
    assert start_mlflow(config) is True
    try:
        trainings = (([0], CHAMPION), ([1, 2, 3], CHALLENGER))
        with model_home(
            tmp_path_factory,
            config.url,
            "stored",
            trainings,
            MLOPS_LANDING_URI=f"s3://{BUCKET}/landing",
            MLOPS_DATA_URI=f"s3://{BUCKET}/data",
        ) as settings:
            yield settings
    finally:
        stop_mlflow(config)


def keys(prefix: str) -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_batches_land_and_are_kept_in_the_bucket_and_nothing_on_local_disk(stored: Settings) -> None:
    model = stored.model_name
    assert keys(f"landing/{model}/") == []  # every landed batch was claimed
    kept = keys(f"data/{model}/")
    assert sum(key.startswith(f"data/{model}/processed/") for key in kept) == 4, kept
    assert any(key.startswith(f"data/{model}/snapshots/") for key in kept), kept
    for local in (stored.resolved_home / "landing", stored.resolved_home / "data"):
        assert not local.exists() or not any(local.rglob("*.csv")), f"batches written to {local}"


def test_run_artifacts_and_onnx_bundles_are_in_the_bucket_and_served_from_there(
    stored: Settings, tmp_path: Path
) -> None:
    import boto3

    from serving.bundle import read_bundle
    from tasks.serving_bundle import fetch_bundle

    artifacts = keys("mlflow/")
    assert any(key.endswith("/model.onnx") for key in artifacts), artifacts[:20]
    assert sum(key.endswith("/model.onnx") for key in artifacts) >= 2  # both versions' bundles
    model_file, metadata = fetch_bundle(stored.tracking_uri, f"models:/{stored.model_name}@{CHAMPION}", tmp_path)
    assert read_bundle(model_file.parent)[1].sha256 == metadata.sha256  # sha256-checked, via the proxied store
    snapshot = next(key for key in keys(f"data/{stored.model_name}/snapshots/"))
    body = boto3.client("s3").get_object(Bucket=BUCKET, Key=snapshot)["Body"].read()
    frame = pd.read_parquet(io.BytesIO(body)) if snapshot.endswith(".parquet") else pd.read_csv(io.BytesIO(body))
    assert len(frame) > 0 and set(stored.spec().feature_names) <= set(frame.columns)


def test_two_serving_hosts_ship_their_requests_and_one_monitor_judges_them_from_the_bucket(
    stored: Settings, tmp_path: Path
) -> None:
    from flows.monitor import MonitorParameters, monitor_flow
    from mlops.settings import get_settings
    from tasks.ingest import accepted_frame
    from tasks.serving_bundle import fetch_bundle
    from tasks.ship_requests import ship_finished
    from tests.conftest import serving_process

    features = list(stored.spec().feature_names)
    frame = accepted_frame(stored.data_for())
    assert frame is not None
    model_file, metadata = fetch_bundle(stored.tracking_uri, f"models:/{stored.model_name}@{CHAMPION}", tmp_path / "b")
    hosts = {"a": tmp_path / "host-a", "b": tmp_path / "host-b"}
    for number, folder in enumerate(hosts.values()):  # each host serves and collects on its own disk
        with serving_process(model_file.parent, "--collect-dir", str(folder)) as url, httpx.Client() as client:
            for row in frame[features].sample(120, replace=True, random_state=number).to_numpy().tolist():
                assert client.post(f"{url}/invocations", json={"instances": [row]}).status_code == 200
    uri = f"s3://{BUCKET}/requests"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_REQUESTS_URI", uri)
        get_settings.cache_clear()
        target = get_settings().requests_for(stored.model_name)
        assert ship_finished(hosts["a"], target, host="a").files == 1
        shipped = subprocess.run(  # the sidecar's way, as host b's operator runs it
            [
                sys.executable,
                "-m",
                "cli.main",
                "ship-requests",
                "--model",
                stored.model_name,
                "--from",
                str(hosts["b"]),
            ],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert shipped.returncode == 0 and "shipped 1 file(s)" in shipped.stdout, shipped.stderr[-2000:]
        left = [path.name for folder in hosts.values() for path in folder.glob("requests-*")]
        assert left == [], left  # uploaded, then removed locally
        names = keys(f"requests/{stored.model_name}/")
        assert len(names) == 2 and {name.rsplit("-", 1)[-1] for name in names} >= {"a.jsonl"}, names

        outcome = monitor_flow(MonitorParameters(window_minutes=30, model_name=stored.model_name))
    get_settings.cache_clear()
    assert outcome.status == "judged" and outcome.rows == 240, outcome.message
    assert outcome.version == metadata.version
