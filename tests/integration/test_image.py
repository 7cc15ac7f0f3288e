"""The serving image for real: built by the release flow against a real Docker engine, run, asked over HTTP.

Needs an engine (``.ci/docker-engine start`` on a machine without one); skips without, except in
CI where ``MLOPS_REQUIRE_DOCKER=1`` makes a missing engine a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest

from flows.release import ReleaseOutcome, ReleaseParameters, release_flow
from mlflow_server import MlflowServerConfig
from mlops.process import free_port
from mlops.settings import Settings, get_settings
from serving.bundle import Example
from tasks.docker_engine import EngineUnavailable
from tasks.image import ImageBuildError, ImageSpec, build_image
from tasks.ingest import accepted_frame
from tasks.smoke import SmokeConfig, SmokeTestError, smoke_test_image
from tests.integration.conftest import REQUIRE_DOCKER, model_home

HEAVY = ("mlflow", "sklearn", "great_expectations", "evidently", "pandas", "prefect", "skl2onnx", "scipy")


@dataclass(frozen=True)
class Released:
    settings: Settings
    outcome: ReleaseOutcome
    frame: pd.DataFrame
    tolerance: float


@pytest.fixture(scope="module")
def released(
    docker_engine: Any,
    tmp_path_factory: pytest.TempPathFactory,
    mlflow_config: MlflowServerConfig,
    prefect_harness: None,
) -> Iterator[Released]:
    """A champion trained by the real flow, then released: image built and smoke-tested."""
    # a random model name: images outlive a test session in the engine's cache
    with model_home(tmp_path_factory, mlflow_config.url, "imaged") as settings:
        name = settings.model_name
        outcome = release_flow(ReleaseParameters(version="champion", image_only=True))
        frame = accepted_frame(settings.data_for())
        assert frame is not None
        version = mlflow.MlflowClient(settings.tracking_uri).get_model_version(name, "1")
        yield Released(settings, outcome, frame, float(version.tags["onnx_parity_tolerance"]))
    for image in docker_engine.images.list(name=ImageSpec().image_name(name)):
        docker_engine.images.remove(image.id, force=True)


def version_tags(settings: Settings, version: str = "1") -> dict[str, str]:
    return dict(mlflow.MlflowClient(settings.tracking_uri).get_model_version(settings.model_name, version).tags)


def test_release_builds_a_labelled_non_root_image_and_records_it(released: Released, docker_engine: Any) -> None:
    outcome, settings = released.outcome, released.settings
    image = docker_engine.images.get(outcome.image)
    assert image.id == outcome.image_id
    config = image.attrs["Config"]
    assert config["User"] == "65532:65532"
    assert "serving.healthcheck" in " ".join(config["Healthcheck"]["Test"])
    tags = version_tags(settings)
    labels = image.labels
    assert labels["mlops.model.name"] == settings.model_name
    assert labels["mlops.model.version"] == "1"
    assert labels["mlops.model.onnx-sha256"] == tags["onnx_sha256"]
    assert labels["mlops.model.run-id"] == tags["run_id"]
    assert labels["org.opencontainers.image.revision"] == tags["git_commit"]
    assert labels["org.opencontainers.image.created"].endswith("Z")
    assert outcome.image == f"mlops/{settings.model_name}:1"
    assert any(tag.startswith(f"mlops/{settings.model_name}:git-") for tag in image.tags)
    assert tags["image_ref"] == outcome.image and tags["image_id"] == image.id
    assert tags["image_smoke"] == "passed", tags.get("image_smoke_summary")
    assert float(tags["image_seconds_to_ready"]) > 0
    assert outcome.digest is None  # no registry configured: nothing pushed
    assert 50e6 < outcome.size_bytes < 400e6


def test_the_image_holds_the_server_and_nothing_heavier(released: Released, docker_engine: Any) -> None:
    probe = (
        "import importlib.util, os, json; "
        f"print(json.dumps([[m for m in {list(HEAVY)!r} if importlib.util.find_spec(m)], "
        "[os.path.exists(p) for p in ('/tmp/ca-bundle.crt', '/tmp/extra-ca')], os.getuid(), "
        "[m for m in ('onnxruntime', 'uvloop', 'orjson') if importlib.util.find_spec(m) is None]]))"
    )
    output = docker_engine.containers.run(
        released.outcome.image, entrypoint=["/opt/serving/bin/python", "-c", probe], network_mode="host", remove=True
    )
    heavy, build_only_files, uid, missing = json.loads(output)
    assert heavy == [] and missing == []
    assert build_only_files == [False, False]  # extra CA certificates stay in the build stage
    assert uid == 65532


def test_the_container_answers_like_the_trained_model_and_stops_cleanly(released: Released, docker_engine: Any) -> None:
    settings, port = released.settings, free_port()
    container = docker_engine.containers.run(
        released.outcome.image,
        detach=True,
        network_mode="host",
        environment={"MLOPS_SERVING_HOST": "127.0.0.1", "MLOPS_SERVING_PORT": str(port)},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            container.reload()
            assert container.status == "running", container.logs().decode()
            assert time.monotonic() < deadline, container.logs().decode()
            time.sleep(0.2)
        rows = released.frame[list(settings.spec().feature_names)].sample(40, random_state=1)
        expected = mlflow.sklearn.load_model(f"models:/{settings.model_name}/1").predict(rows)
        split = {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
        answer = httpx.post(f"{url}/invocations", json=split)
        assert answer.status_code == 200, answer.text
        assert np.max(np.abs(np.asarray(answer.json()["predictions"]) - expected)) <= released.tolerance
        tensor = {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(rows.shape),
                    "datatype": "FP64",
                    "data": rows.to_numpy().ravel().tolist(),
                }
            ]
        }
        answer = httpx.post(f"{url}/v2/models/{settings.model_name}/infer", json=tensor)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == "1"
        assert np.max(np.abs(np.asarray(answer.json()["outputs"][0]["data"]) - expected)) <= released.tolerance
        bad = httpx.post(f"{url}/invocations", json={"instances": [[1.0]]})
        assert bad.status_code == 400 and "expected" in bad.json()["message"]
        container.stop(timeout=30)  # SIGTERM: the server drains and exits 0
        container.reload()
        assert container.attrs["State"]["ExitCode"] == 0, container.logs().decode()[-2000:]
    finally:
        container.remove(force=True)


def test_releasing_the_same_version_again_reuses_its_image(released: Released) -> None:
    again = release_flow(ReleaseParameters(version="1", image_only=True))
    assert again.image_id == released.outcome.image_id
    assert again.build_seconds == 0


def test_a_failed_build_leaves_the_registry_untouched(released: Released, monkeypatch: pytest.MonkeyPatch) -> None:
    before = version_tags(released.settings)
    monkeypatch.setenv("MLOPS_IMAGE_BASE", "local/no-such-base:1")
    get_settings.cache_clear()
    with pytest.raises(ImageBuildError, match=r"base image local/no-such-base:1 is not in the engine"):
        release_flow(ReleaseParameters(version="1", image_only=True))
    get_settings.cache_clear()
    assert version_tags(released.settings) == before


def test_without_an_engine_an_image_release_fails_clearly_and_changes_nothing(
    released: Released, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    before = version_tags(released.settings)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/gone.sock")
    with pytest.raises(EngineUnavailable, match="no Docker engine answers at unix://"):
        release_flow(ReleaseParameters(version="1", image="always", image_only=True))
    assert version_tags(released.settings) == before
    skipped = release_flow(ReleaseParameters(version="1", image="auto", image_only=True))  # auto: no engine, no image
    assert skipped.image is None and skipped.message == f"{released.settings.model_name} version 1"
    assert version_tags(released.settings) == before


def test_a_container_not_ready_in_time_fails_the_release_and_is_recorded(
    released: Released, docker_engine: Any
) -> None:
    with pytest.raises(SmokeTestError, match="not ready in time"):
        release_flow(ReleaseParameters(version="1", smoke=SmokeConfig(ready_timeout_seconds=0.001), image_only=True))
    tags = version_tags(released.settings)
    assert tags["image_smoke"] == "failed"
    assert "not ready in time" in tags["image_smoke_summary"]
    assert docker_engine.containers.list(all=True, filters={"label": f"mlops.image={released.outcome.image}"}) == []
    release_flow(ReleaseParameters(version="1", image_only=True))  # a passing run records the new verdict
    assert version_tags(released.settings)["image_smoke"] == "passed"


def test_a_wrong_answer_fails_the_smoke_test_and_leaves_no_container(released: Released, docker_engine: Any) -> None:
    settings = released.settings
    image = build_image(settings.tracking_uri, f"models:/{settings.model_name}/1", ImageSpec.from_settings(settings))
    assert image.build_seconds == 0 and image.metadata.example is not None
    example = image.metadata.example
    wrong = Example(example.inputs, tuple(p * 2 + 1 for p in example.predictions), example.tolerance)
    with pytest.raises(SmokeTestError, match="answered the known request off by"):
        smoke_test_image(replace(image, metadata=replace(image.metadata, example=wrong)), SmokeConfig())
    leftover = docker_engine.containers.list(all=True, filters={"label": f"mlops.image={image.reference}"})
    assert leftover == []


@pytest.fixture
def local_registry(tmp_path: Path) -> Iterator[str]:
    """Debian's docker-registry (the CNCF distribution server) on a loopback port."""
    binary = shutil.which("docker-registry")
    if binary is None:
        message = "docker-registry is not installed (`.ci/docker-engine start` installs it)"
        if os.environ.get(REQUIRE_DOCKER) == "1":
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'store'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\nlog:\n  level: warn\n"
    )
    process = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()[1].decode()[-2000:]
            try:
                if httpx.get(f"http://{address}/v2/", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "registry not ready in 30 s"
            time.sleep(0.1)
        yield address
    finally:
        process.terminate()
        process.wait(10)


def test_a_pushed_image_is_in_the_registry_under_the_recorded_digest(
    released: Released, local_registry: str, docker_engine: Any
) -> None:
    settings = released.settings
    spec = replace(ImageSpec.from_settings(settings), registry=local_registry)
    image = build_image(settings.tracking_uri, f"models:/{settings.model_name}/1", spec)
    try:
        path = f"mlops/{settings.model_name}"
        assert image.reference == f"{local_registry}/{path}:1"
        assert image.digest is not None and image.digest.startswith(f"{local_registry}/{path}@sha256:")
        manifest = httpx.head(
            f"http://{local_registry}/v2/{path}/manifests/1",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        )
        assert manifest.status_code == 200
        assert manifest.headers["Docker-Content-Digest"] == image.digest.split("@", 1)[1]
        listed = httpx.get(f"http://{local_registry}/v2/{path}/tags/list").json()["tags"]
        assert "1" in listed and any(tag.startswith("git-") for tag in listed)
        assert version_tags(settings)["image_digest"] == image.digest
    finally:
        for tag in image.tags:
            docker_engine.images.remove(tag, force=True)
