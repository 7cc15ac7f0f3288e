"""The real server process over real HTTP, serving a model the training flow exported and registered."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest

from mlflow_server import MlflowServerConfig
from mlops.process import free_port
from mlops.settings import Settings
from serving.bundle import MODEL_FILE
from serving.collector import iter_collected
from tasks.ingest import accepted_frame
from tests.integration.conftest import model_home

TOKEN = "integration-token"
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Trained:
    settings: Settings
    env: dict[str, str]
    frame: pd.DataFrame
    tolerance: float


@dataclass
class Server:
    process: subprocess.Popen[str]
    url: str
    collect_dir: Path
    bundle_dir: Path


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, mlflow_config: MlflowServerConfig, prefect_harness: None
) -> Iterator[Trained]:
    """A champion trained and exported by the real flow, in a home of this module's own."""
    with model_home(tmp_path_factory, mlflow_config.url, "served") as settings:
        frame = accepted_frame(settings.data_for())
        assert frame is not None
        version = mlflow.MlflowClient(settings.tracking_uri).get_model_version(settings.model_name, "1")
        tolerance = float(version.tags["onnx_parity_tolerance"])
        yield Trained(settings, dict(os.environ), frame, tolerance)


def start_server(env: dict[str, str], model: str, tmp_path: Path, *extra: str) -> Server:
    port = free_port()
    collect_dir, bundle_dir = tmp_path / "collected", tmp_path / "bundle"
    command = [sys.executable, "-m", "serving", model, "--port", str(port), "--collect-dir", str(collect_dir)]
    if model.startswith("models:/"):
        command += ["--bundle-dir", str(bundle_dir)]
    process = subprocess.Popen(
        [*command, *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    server = Server(process, f"http://127.0.0.1:{port}", collect_dir, bundle_dir)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return server
        try:
            if httpx.get(f"{server.url}/v2/health/ready", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError(f"server not ready in 90 s: {process.communicate()[1][-2000:]}")


@pytest.fixture
def served(trained: Trained, tmp_path: Path) -> Iterator[Server]:
    env = {
        **trained.env,
        "MLOPS_SERVING_TOKEN": TOKEN,
        "MLOPS_SERVING_MAX_ROWS": "50",
        "MLOPS_SERVING_MAX_BODY_BYTES": "100000",
    }
    server = start_server(env, f"models:/{trained.settings.model_name}@champion", tmp_path)
    assert server.process.poll() is None, server.process.communicate()[1][-2000:]
    yield server
    if server.process.poll() is None:
        server.process.kill()
        server.process.wait(10)


def auth() -> dict[str, str]:
    return {"authorization": f"Bearer {TOKEN}"}


def test_both_protocols_match_the_scikit_learn_model(trained: Trained, served: Server) -> None:
    settings = trained.settings
    features = list(settings.spec().feature_names)
    rows = trained.frame[features].head(40)
    sklearn_model = mlflow.sklearn.load_model(f"models:/{settings.model_name}@champion")
    expected = sklearn_model.predict(rows)

    split = {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
    answer = httpx.post(f"{served.url}/invocations", json=split, headers=auth())
    assert answer.status_code == 200, answer.text
    assert np.max(np.abs(np.array(answer.json()["predictions"]) - expected)) <= trained.tolerance

    tensor = {
        "inputs": [
            {"name": "input", "shape": list(rows.shape), "datatype": "FP64", "data": rows.to_numpy().ravel().tolist()}
        ]
    }
    answer = httpx.post(f"{served.url}/v2/models/{settings.model_name}/infer", json=tensor, headers=auth())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_version"] == "1"
    assert np.max(np.abs(np.array(body["outputs"][0]["data"]) - expected)) <= trained.tolerance

    meta = httpx.get(f"{served.url}/v2/models/{settings.model_name}", headers=auth()).json()
    version = mlflow.MlflowClient(settings.tracking_uri).get_model_version(settings.model_name, "1")
    assert meta["parameters"]["sha256"] == version.tags["onnx_sha256"]
    assert meta["parameters"]["features"] == features


def test_bad_requests_get_4xx_and_the_server_stays_up(trained: Trained, served: Server) -> None:
    features = list(trained.settings.spec().feature_names)
    good_row = trained.frame[features].iloc[0].tolist()
    url = f"{served.url}/invocations"
    cases = [
        (b"{oops", auth(), 400, "not valid JSON"),
        (json.dumps({"instances": [good_row[:-1]]}).encode(), auth(), 400, f"expected {len(features)} values"),
        (json.dumps({"instances": [["x", *good_row[1:]]]}).encode(), auth(), 400, "feature 'age': expected a number"),
        (b'{"instances": [[NaN' + b", 1" * (len(features) - 1) + b"]]}", auth(), 400, "is not finite"),
        (b'{"instances": [[1e400' + b", 1" * (len(features) - 1) + b"]]}", auth(), 400, "value inf is not finite"),
        (json.dumps({"instances": [good_row] * 51}).encode(), auth(), 413, "51 rows exceed the limit of 50"),
        (b" " * 100_001, auth(), 413, "exceeds the limit of 100000"),
        (json.dumps({"instances": [good_row]}).encode(), {}, 401, "missing bearer token"),
        (json.dumps({"instances": [good_row]}).encode(), {"authorization": "Bearer wrong"}, 401, "invalid bearer"),
    ]
    for body, headers, status, message in cases:
        answer = httpx.post(url, content=body, headers={"content-type": "application/json", **headers})
        assert answer.status_code == status, (message, answer.text)
        assert message in answer.json()["message"]
    assert httpx.get(f"{served.url}/v2/health/ready").status_code == 200
    assert httpx.post(url, json={"instances": [good_row]}, headers=auth()).status_code == 200

    metrics = httpx.get(f"{served.url}/metrics", headers=auth()).text
    name = trained.settings.model_name
    assert f'mlops_serving_errors_total{{code="400",model="{name}",version="1"}} 5.0' in metrics
    assert f'mlops_serving_errors_total{{code="413",model="{name}",version="1"}} 2.0' in metrics
    assert f'mlops_serving_errors_total{{code="401",model="{name}",version="1"}} 2.0' in metrics
    assert f'mlops_serving_rows_scored_total{{model="{name}",version="1"}} 1.0' in metrics
    assert "mlops_serving_request_duration_seconds_bucket" in metrics


def send_partial_request(url: str, body: bytes, split_at: int) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=30)
    head = (
        f"POST /invocations HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    connection.sendall(head + body[:split_at])
    return connection


def read_response(connection: socket.socket) -> tuple[int, dict[str, object]]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(
        next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1]
    )
    while len(rest) < length:
        rest += connection.recv(65536)
    return int(head.split(b" ")[1]), json.loads(rest[:length])


def test_sigterm_finishes_in_flight_requests_and_flushes_collection(trained: Trained, served: Server) -> None:
    features = list(trained.settings.spec().feature_names)
    rows = trained.frame[features].head(20).to_numpy().tolist()
    for _ in range(3):
        assert httpx.post(f"{served.url}/invocations", json={"instances": rows[:2]}, headers=auth()).status_code == 200
    bodies = [json.dumps({"instances": rows[: 5 + n]}).encode() for n in range(4)]
    connections = [send_partial_request(served.url, body, len(body) // 2) for body in bodies]
    time.sleep(0.3)  # the server has the headers and half of every body: these requests are in flight
    served.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    for connection, body in zip(connections, bodies, strict=True):
        connection.sendall(body[len(body) // 2 :])
    answers = [read_response(connection) for connection in connections]
    assert [status for status, _ in answers] == [200] * 4
    assert [len(answer["predictions"]) for _, answer in answers] == [5, 6, 7, 8]  # type: ignore[arg-type]
    served.process.wait(30)
    assert served.process.returncode in (0, -signal.SIGTERM)
    collected = list(iter_collected(served.collect_dir))
    assert len(collected) == 3 * 2 + 5 + 6 + 7 + 8
    assert not list(served.collect_dir.glob("*.part"))
    assert {row["model_version"] for row in collected} == {"1"}


def test_a_bundle_with_a_wrong_sha256_is_refused(trained: Trained, served: Server, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(served.bundle_dir, tampered)
    model_file = tampered / MODEL_FILE
    model_file.write_bytes(model_file.read_bytes()[:-1] + b"\x01")
    refused = start_server(trained.env, str(tampered), tmp_path / "second")
    assert refused.process.wait(30) == 2
    stderr = refused.process.communicate()[1]
    assert "sha256" in stderr and "refusing to serve it" in stderr


def test_an_unknown_registry_version_is_refused_with_the_reason(trained: Trained, tmp_path: Path) -> None:
    refused = start_server(trained.env, f"models:/{trained.settings.model_name}/99", tmp_path)
    assert refused.process.wait(60) == 2
    stderr = refused.process.communicate()[1]
    assert f"models:/{trained.settings.model_name}/99 does not resolve to a model version" in stderr


def test_the_triton_http_client_is_answered_with_binary_data_on_and_off(trained: Trained, served: Server) -> None:
    """tritonclient.http sends binary tensor data by default and asks for binary outputs: the extension."""
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    settings = trained.settings
    name = settings.model_name
    features = list(settings.spec().feature_names)
    rows = trained.frame[features].head(20)
    sklearn_model = mlflow.sklearn.load_model(f"models:/{name}@champion")
    client = triton.InferenceServerClient(served.url.removeprefix("http://"))
    try:
        assert "binary_tensor_data" in client.get_server_metadata(headers=auth())["extensions"]
        meta = client.get_model_metadata(name, headers=auth())
        matrix_input, output = meta["inputs"][0]["name"], meta["outputs"][0]["name"]
        for datatype, dtype in (("FP64", np.float64), ("FP32", np.float32)):
            values = rows.to_numpy().astype(dtype)
            expected = sklearn_model.predict(pd.DataFrame(values.astype(np.float64), columns=features))
            for binary in (True, False):
                tensor = triton.InferInput(matrix_input, list(values.shape), datatype)
                tensor.set_data_from_numpy(values, binary_data=binary)
                result = client.infer(name, [tensor], headers=auth())  # outputs as binary data by default
                answer = result.as_numpy(output)
                assert answer is not None and answer.shape == (len(rows), 1), (datatype, binary)
                assert np.max(np.abs(answer.reshape(-1) - expected)) <= trained.tolerance, (datatype, binary)

        # one binary tensor per column, a JSON output asked for by name
        columns = []
        for feature in features:
            column = triton.InferInput(feature, [len(rows)], "FP64")
            column.set_data_from_numpy(rows[feature].to_numpy(), binary_data=True)
            columns.append(column)
        wanted = [triton.InferRequestedOutput(output, binary_data=False)]
        result = client.infer(name, columns, outputs=wanted, headers=auth(), request_id="mine-1")
        assert result.get_response()["id"] == "mine-1"
        assert "data" in result.get_output(output)
        expected = sklearn_model.predict(rows)
        assert np.max(np.abs(result.as_numpy(output).reshape(-1) - expected)) <= trained.tolerance

        with pytest.raises(InferenceServerException, match="unknown output"):
            client.infer(name, columns, outputs=[triton.InferRequestedOutput("nope")], headers=auth())
    finally:
        client.close()
