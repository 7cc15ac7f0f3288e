"""Image build pieces that need no engine: names, labels, certificates, context digest, requirements."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from deployments.serving_requirements import main as requirements_main
from mlops.process import free_port
from serving.bundle import ModelMetadata
from serving.config import ServerConfig
from serving.healthcheck import main as healthcheck_main
from serving.healthcheck import ready_url
from tasks.docker_engine import EngineUnavailable, connect
from tasks.image import (
    CONTEXT_LABEL,
    ImageBuildError,
    ImageSpec,
    ca_certificates,
    context_digest,
    image_labels,
    reusable,
)

METADATA = ModelMetadata(
    "Diabetes Model", "3", ("a", "b"), "input", "variable", "ab" * 32, run_id="run9", family="ridge"
)


def test_image_names_are_valid_docker_paths() -> None:
    assert ImageSpec().image_name("diabetes") == "mlops/diabetes"
    assert ImageSpec().image_name("Diabetes Model/v2") == "mlops/diabetes-model-v2"
    assert ImageSpec().image_name("model_ab12") == "mlops/model_ab12"
    assert ImageSpec(registry="127.0.0.1:5000/", repository="team").image_name("x") == "127.0.0.1:5000/team/x"


def test_labels_name_the_model_the_code_and_the_build() -> None:
    labels = image_labels(
        METADATA,
        {"git_commit": "c0ffee", "dataset_digest": "d1"},
        ImageSpec(base_image="local/python:3.11-bookworm"),
        "abc123",
        datetime(2026, 11, 23, 1, 2, 3, tzinfo=UTC),
    )
    assert labels["mlops.model.name"] == "Diabetes Model"
    assert labels["mlops.model.version"] == labels["org.opencontainers.image.version"] == "3"
    assert labels["mlops.model.onnx-sha256"] == "ab" * 32
    assert labels["mlops.model.run-id"] == "run9"
    assert labels["mlops.model.training-commit"] == "c0ffee"
    assert labels["org.opencontainers.image.revision"] == "abc123"
    assert labels["org.opencontainers.image.created"] == "2026-11-23T01:02:03Z"
    assert labels["org.opencontainers.image.base.name"] == "local/python:3.11-bookworm"


def test_ca_certificates_from_a_file_a_folder_or_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.crt").write_text("A")
    (tmp_path / "b.crt").write_text("B")
    (tmp_path / "notes.txt").write_text("not a certificate")
    assert ca_certificates(None) == []
    assert ca_certificates(tmp_path / "a.crt") == [tmp_path / "a.crt"]
    assert ca_certificates(tmp_path) == [tmp_path / "a.crt", tmp_path / "b.crt"]
    with pytest.raises(ImageBuildError, match="MLOPS_IMAGE_CA_CERTS"):
        ca_certificates(tmp_path / "missing")


def test_context_digest_changes_with_any_byte_or_name(tmp_path: Path) -> None:
    (tmp_path / "serving").mkdir()
    (tmp_path / "serving" / "app.py").write_text("x = 1\n")
    (tmp_path / "Dockerfile").write_text("FROM base\n")
    first = context_digest(tmp_path)
    assert context_digest(tmp_path) == first
    (tmp_path / "serving" / "app.py").write_text("x = 2\n")
    second = context_digest(tmp_path)
    assert second != first
    (tmp_path / "serving" / "app.py").rename(tmp_path / "serving" / "main.py")
    assert context_digest(tmp_path) not in {first, second}


def test_an_existing_tag_is_reused_only_for_the_same_build_and_never_overwritten_by_another_model() -> None:
    labels = {
        "org.opencontainers.image.base.name": "base",
        "mlops.image.base-id": "sha256:1",
        CONTEXT_LABEL: "ctx",
    }
    same = {**labels, "mlops.model.onnx-sha256": METADATA.sha256}
    assert reusable(same, METADATA, labels, "mlops/x:3") is True
    assert reusable({**same, CONTEXT_LABEL: "other code"}, METADATA, labels, "mlops/x:3") is False
    assert reusable({**same, "mlops.image.base-id": "sha256:2"}, METADATA, labels, "mlops/x:3") is False
    with pytest.raises(ImageBuildError, match="already exists with a different model"):
        reusable({**same, "mlops.model.onnx-sha256": "cd" * 32}, METADATA, labels, "mlops/x:3")


def test_serving_requirements_are_exported_from_the_lock() -> None:
    assert requirements_main(["--check"]) == 0, "run `make serving-requirements`"
    text = (Path(__file__).resolve().parents[2] / "deployments/docker/serving-requirements.txt").read_text()
    for present in ("onnxruntime==", "numpy==", "uvicorn==", "orjson==", "prometheus-client==", "--hash=sha256:"):
        assert present in text
    for absent in ("mlflow", "scikit-learn", "great-expectations", "evidently", "pandas", "prefect"):
        assert f"\n{absent}==" not in text


def test_missing_engine_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(EngineUnavailable, match=r"no Docker engine answers at unix://.*no-engine\.sock.*DOCKER_HOST"):
        connect(timeout=5)


def test_healthcheck_targets_loopback_and_fails_when_nothing_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ready_url(ServerConfig(host="0.0.0.0", port=9000)) == "http://127.0.0.1:9000/v2/health/ready"
    assert ready_url(ServerConfig(host="::", port=9000)) == "http://127.0.0.1:9000/v2/health/ready"
    assert ready_url(ServerConfig(host="::1", port=9000)) == "http://[::1]:9000/v2/health/ready"
    monkeypatch.setenv("MLOPS_SERVING_PORT", str(free_port()))
    assert healthcheck_main(timeout=1) == 1
    monkeypatch.setenv("MLOPS_SERVING_PORT", "not-a-port")
    assert healthcheck_main(timeout=1) == 1


def test_deployment_containers_run_as_the_user_that_can_write_the_requests_folder() -> None:
    from tasks.targets import IMAGE_UID, container_user

    assert container_user(["name=seccomp,profile=builtin"], 0, 0) == f"{IMAGE_UID}:{IMAGE_UID}"  # never root
    assert container_user(["name=seccomp,profile=builtin", "name=cgroupns"], 1000, 1001) == "1000:1001"
    # rootless: uid 0 in the container is the host user; 1000 would be a subordinate uid of theirs
    assert container_user(["name=seccomp,profile=builtin", "name=rootless", "name=cgroupns"], 1000, 1000) == "0:0"
