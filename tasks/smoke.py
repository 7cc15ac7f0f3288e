"""QA smoke test of a serving image: the gate before any traffic reaches it.

The image runs as a container on a free loopback port; the test waits until the server says ready
and runs the image's own HEALTHCHECK command, then checks that the server names the right model (name,
version, ONNX sha256) and answers the model's known request, over both protocols, within the
parity tolerance of the scikit-learn model's answer recorded at export. The container is always
removed.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
from docker.errors import DockerException
from prefect import task
from pydantic import BaseModel, Field

from mlops.process import free_port
from serving.bundle import Example, ModelMetadata
from tasks.docker_engine import connect
from tasks.events import run_logger
from tasks.image import ServingImage
from tasks.tracking import client

LOG_TAIL_LINES = 30


class SmokeTestError(RuntimeError):
    """The deployment did not start, did not become ready, or answered wrongly."""


class SmokeConfig(BaseModel):
    """How long a container may take and how strictly it is judged."""

    ready_timeout_seconds: float = Field(60.0, gt=0, description="Start to ready (server and HEALTHCHECK).")
    request_timeout_seconds: float = Field(10.0, gt=0, description="Per request to the container.")


@dataclass(frozen=True)
class SmokeResult:
    """What the smoke test saw.

    Attributes:
        reference: The image tested.
        seconds_to_ready: Container start until ``/v2/health/ready`` answered 200.
        rows: Rows of the known request.
        max_abs_error: Largest |answer - expected| over both protocols.
        tolerance: What was allowed.
    """

    reference: str
    seconds_to_ready: float
    rows: int
    max_abs_error: float
    tolerance: float

    @property
    def summary(self) -> str:
        return (
            f"smoke test passed: ready in {self.seconds_to_ready:.1f} s, HEALTHCHECK passed, "
            f"{self.rows} known rows within {self.max_abs_error:.3g} of the trained model "
            f"(allowed {self.tolerance:.3g})"
        )

    def registry_tags(self) -> dict[str, str]:
        return {
            "image_smoke": "passed",
            "image_smoke_summary": self.summary,
            "image_seconds_to_ready": f"{self.seconds_to_ready:.2f}",
        }


def known_example(metadata: ModelMetadata) -> Example:
    if metadata.example is None:
        raise SmokeTestError(
            f"{metadata.name} version {metadata.version} carries no known request/answer in its bundle "
            "(exported before examples existed): retrain it to get one"
        )
    return metadata.example


def check_answers(base_url: str, metadata: ModelMetadata, timeout: float, token: str | None = None) -> float:
    """Ask a running server who it is and the known request, by both protocols; return the largest error
    (of a prediction, or of a class probability: a classifier's labels must be equal).

    Raises:
        SmokeTestError: It serves another model, refuses the request, or answers beyond the tolerance.
    """
    example = known_example(metadata)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    rows = [list(row) for row in example.inputs]
    classifier = bool(example.probabilities)
    with httpx.Client(base_url=base_url, timeout=timeout, headers=headers) as http:
        described = _json(http.get(f"/v2/models/{metadata.name}"), "model metadata")
        served = (described.get("versions") or [None])[0], (described.get("parameters") or {}).get("sha256")
        if served != (metadata.version, metadata.sha256):
            raise SmokeTestError(
                f"the server reports {metadata.name} version {served[0]} sha256 {served[1]}; "
                f"expected version {metadata.version} sha256 {metadata.sha256}"
            )
        v2 = _json(http.post(f"/v2/models/{metadata.name}/infer", json=_v2_request(metadata, rows)), "v2 infer")
        split = {"dataframe_split": {"columns": list(metadata.features), "data": rows}}
        mlflow = _json(http.post("/invocations", json=split), "/invocations")["predictions"]
        if classifier:
            proba = {**split, "params": {"predict_method": "predict_proba"}}
            probabilities = _json(http.post("/invocations", json=proba), "/invocations predict_proba")["predictions"]
    outputs = {output.get("name"): output.get("data") for output in v2.get("outputs") or []}
    if not classifier:
        expected = np.asarray(example.predictions, dtype=np.float64)
        answers = {"v2": outputs.get(metadata.output_name), "/invocations": mlflow}
    else:
        for protocol, labels in (("v2", outputs.get("label")), ("/invocations", mlflow)):
            if list(labels or []) != list(example.predictions):
                raise SmokeTestError(
                    f"{metadata.name} version {metadata.version} answered the known request with labels "
                    f"{labels} by {protocol}; the trained model says {list(example.predictions)}"
                )
        expected = np.asarray(example.probabilities, dtype=np.float64)
        answers = {"v2": outputs.get("probabilities"), "/invocations": probabilities}
    errors = {
        protocol: float(np.max(np.abs(np.asarray(answer, dtype=np.float64).reshape(expected.shape) - expected)))
        for protocol, answer in answers.items()
    }
    worst = max(errors.values())
    if not worst <= example.tolerance:
        detail = ", ".join(f"{protocol} {error:.3g}" for protocol, error in errors.items())
        raise SmokeTestError(
            f"{metadata.name} version {metadata.version} answered the known request off by {worst:.3g} "
            f"({detail}); allowed {example.tolerance:.3g}"
        )
    return worst


def _v2_request(metadata: ModelMetadata, rows: list[list[Any]]) -> dict[str, Any]:
    """The known rows as a v2 request: one FP64 matrix for a numeric model, else one tensor per column."""
    if metadata.input_name and all(isinstance(value, float) for row in rows for value in row):
        shape = [len(rows), len(metadata.features)]
        data = [value for row in rows for value in row]
        return {"inputs": [{"name": metadata.input_name, "shape": shape, "datatype": "FP64", "data": data}]}
    types = {item.get("column"): item.get("type", "double") for item in metadata.inputs}
    return {
        "inputs": [
            {
                "name": column,
                "shape": [len(rows)],
                "datatype": "BYTES" if types.get(column) == "string" else "FP64",
                "data": [row[index] for row in rows],
            }
            for index, column in enumerate(metadata.features)
        ]
    }


def _json(response: httpx.Response, what: str) -> Any:
    if response.status_code != 200:
        raise SmokeTestError(f"{what} answered {response.status_code}: {response.text[:500]}")
    return response.json()


def _logs(container: Any) -> str:
    try:
        return bytes(container.logs(tail=LOG_TAIL_LINES)).decode(errors="replace")
    except DockerException as error:
        return f"(logs unavailable: {error})"


def wait_until_ready(container: Any, url: str, deadline: float) -> None:
    """Poll the readiness endpoint until 200, failing early if the container exits."""
    while True:
        container.reload()
        if container.status in {"exited", "dead"}:
            code = container.attrs["State"].get("ExitCode")
            raise SmokeTestError(f"container exited with code {code} before it was ready; its log:\n{_logs(container)}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SmokeTestError(f"{url} not ready in time; container log:\n{_logs(container)}")
        time.sleep(0.1)


def run_healthcheck(container: Any) -> None:
    """Run the image's own HEALTHCHECK command in the container, as Docker would, and require success.

    Orchestrators act on this check, so a broken one would get a good deployment killed. Running it
    directly gives the verdict now instead of one probe interval later.
    """
    test = ((container.image.attrs.get("Config") or {}).get("Healthcheck") or {}).get("Test") or []
    if not test or test[0] == "NONE":
        raise SmokeTestError("the image defines no HEALTHCHECK")
    command = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]
    exit_code, output = container.exec_run(command)
    if exit_code != 0:
        text = bytes(output or b"").decode(errors="replace").strip()
        raise SmokeTestError(f"the HEALTHCHECK ({' '.join(command)}) failed with exit code {exit_code}: {text}")


@task
def smoke_test_image(image: ServingImage, config: SmokeConfig) -> SmokeResult:
    """Run the image, wait for ready and healthy, check its identity and known answer, remove it.

    Raises:
        EngineUnavailable: No Docker engine answers.
        SmokeTestError: Anything the gate checks failed; the message carries the container's log.
    """
    log = run_logger(__name__)
    engine = connect()
    port = free_port()
    name = f"smoke-{image.metadata.name}-{image.metadata.version}-{uuid.uuid4().hex[:8]}"
    container = engine.containers.run(
        image.image_id,
        detach=True,
        name=name,
        network_mode="host",  # no bridge here; the server binds loopback only
        environment={"MLOPS_SERVING_HOST": "127.0.0.1", "MLOPS_SERVING_PORT": str(port)},
        labels={"mlops.role": "smoke-test", "mlops.image": image.reference},
    )
    started = time.monotonic()
    deadline = started + config.ready_timeout_seconds
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_until_ready(container, f"{base_url}/v2/health/ready", deadline)
        ready = time.monotonic() - started
        run_healthcheck(container)
        error = check_answers(base_url, image.metadata, config.request_timeout_seconds)
    finally:
        container.remove(force=True)
    example = known_example(image.metadata)
    result = SmokeResult(image.reference, ready, len(example.inputs), error, example.tolerance)
    log.info("%s: %s", image.reference, result.summary)
    return result


@task(retries=2, retry_delay_seconds=2)
def record_smoke(tracking_uri: str, image: ServingImage, result: SmokeResult | None, failure: str = "") -> None:
    """Tag the model version with the gate's verdict (``image_smoke`` = passed / failed, and why)."""
    tags = result.registry_tags() if result else {"image_smoke": "failed", "image_smoke_summary": failure[:5000]}
    tracker = client(tracking_uri)
    for key, value in tags.items():
        tracker.set_model_version_tag(image.metadata.name, image.metadata.version, key, value)
