"""The serving app through its ASGI interface, with a tiny real ONNX model (no server process)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from starlette.testclient import TestClient

from serving.app import create_app
from serving.collector import CollectorConfig, RequestCollector, iter_collected
from serving.config import ConfigError, ServerConfig
from serving.model import OnnxModel
from tests.conftest import TINY_FEATURES

ROWS = [[0.5, -3.0, 120.0], [1.5, 2.0, -40.0], [-0.25, 0.0, 7.5]]
FLAT = [value for row in ROWS for value in row]
TOKEN = "s3cret"


def expected(tiny_model: Any, rows: list[list[float]] = ROWS) -> np.ndarray:
    return np.asarray(tiny_model.predict(pd.DataFrame(rows, columns=list(TINY_FEATURES))))


def client_for(bundle: Path, collector: RequestCollector | None = None, **config: Any) -> TestClient:
    model = OnnxModel(bundle).load()
    return TestClient(create_app(model, ServerConfig(**config), collector), raise_server_exceptions=False)


@pytest.fixture
def client(tiny_bundle: Path) -> Iterator[TestClient]:
    with client_for(tiny_bundle, max_rows=100, max_body_bytes=20_000) as test_client:
        yield test_client


def records(rows: list[list[float]]) -> list[dict[str, float]]:
    return [dict(zip(TINY_FEATURES, row, strict=True)) for row in rows]


MLFLOW_BODIES = {
    "dataframe_split": {"dataframe_split": {"columns": list(TINY_FEATURES), "data": ROWS}},
    "dataframe_split reordered": {
        "dataframe_split": {"columns": ["x3", "x1", "x2"], "data": [[r[2], r[0], r[1]] for r in ROWS]}
    },
    "dataframe_split without columns": {"dataframe_split": {"data": ROWS}},
    "dataframe_records": {"dataframe_records": records(ROWS)},
    "instances rows": {"instances": ROWS},
    "instances records": {"instances": records(ROWS)},
    "inputs columns": {"inputs": {name: [row[i] for row in ROWS] for i, name in enumerate(TINY_FEATURES)}},
    "inputs rows with params": {"inputs": ROWS, "params": {}},
}


@pytest.mark.parametrize("body", MLFLOW_BODIES.values(), ids=MLFLOW_BODIES.keys())
def test_invocations_accepts_every_mlflow_format(client: TestClient, tiny_model: Any, body: dict[str, Any]) -> None:
    response = client.post("/invocations", json=body)
    assert response.status_code == 200, response.text
    assert np.allclose(response.json()["predictions"], expected(tiny_model), rtol=0, atol=1e-9)
    assert response.headers["x-request-id"]


def test_invocations_accepts_csv(client: TestClient, tiny_model: Any) -> None:
    csv = "x2,x1,x3\n" + "\n".join(f"{r[1]},{r[0]},{r[2]}" for r in ROWS)
    response = client.post("/invocations", content=csv, headers={"content-type": "text/csv"})
    assert response.status_code == 200, response.text
    assert np.allclose(response.json()["predictions"], expected(tiny_model), rtol=0, atol=1e-9)


V2_BODIES = {
    "one flat tensor": {"inputs": [{"name": "input-0", "shape": [3, 3], "datatype": "FP64", "data": FLAT}]},
    "one nested tensor": {"inputs": [{"name": "input", "shape": [3, 3], "datatype": "FP32", "data": ROWS}]},
    "a tensor per feature": {
        "inputs": [
            {"name": name, "shape": [3], "datatype": "FP64", "data": [row[i] for row in ROWS]}
            for i, name in reversed(list(enumerate(TINY_FEATURES)))
        ]
    },
}


@pytest.mark.parametrize("body", V2_BODIES.values(), ids=V2_BODIES.keys())
def test_v2_infer_accepts_a_matrix_or_a_tensor_per_feature(
    client: TestClient, tiny_model: Any, body: dict[str, Any]
) -> None:
    for path in ("/v2/models/tiny/infer", "/v2/models/tiny/versions/7/infer"):
        response = client.post(path, json={**body, "id": "abc"})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert (answer["model_name"], answer["model_version"], answer["id"]) == ("tiny", "7", "abc")
        output = answer["outputs"][0]
        assert output["shape"] == [3, 1] and output["datatype"] == "FP64"
        assert np.allclose(output["data"], expected(tiny_model), rtol=0, atol=1e-9)


def test_health_and_metadata(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    for path in ("/v2/health/ready", "/readyz", "/ping", "/v2/models/tiny/ready"):
        response = client.get(path)
        assert (response.status_code, response.json()) == (200, {"ready": True}), path
    meta = client.get("/v2/models/tiny").json()
    assert meta["name"] == "tiny" and meta["versions"] == ["7"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [
        {"name": "input", "datatype": "FP64", "shape": [-1, 3], "parameters": {"columns": list(TINY_FEATURES)}}
    ]
    assert meta["outputs"] == [{"name": "variable", "datatype": "FP64", "shape": [-1, 1]}]
    assert meta["parameters"]["features"] == list(TINY_FEATURES)
    assert client.get("/v2").json()["name"] == "mlops-onnx-server"


BAD = [
    ("/invocations", b"{not json", 400, "not valid JSON"),
    ("/invocations", b"", 400, "empty request body"),
    ("/invocations", b"[1, 2]", 400, "expected a JSON object"),
    ("/invocations", json.dumps({"rows": ROWS}).encode(), 400, "expected exactly one of"),
    ("/invocations", json.dumps({"instances": ROWS, "inputs": ROWS}).encode(), 400, "expected exactly one of"),
    ("/invocations", json.dumps({"instances": [[1.0, 2.0]]}).encode(), 400, "expected 3 values (x1, x2, x3), got 2"),
    ("/invocations", json.dumps({"instances": [[1.0, "a", 2.0]]}).encode(), 400, "feature 'x2': expected a number"),
    ("/invocations", json.dumps({"instances": [[1.0, None, 2.0]]}).encode(), 400, "feature 'x2': expected a number"),
    ("/invocations", json.dumps({"instances": [[1.0, True, 2.0]]}).encode(), 400, "feature 'x2': expected a number"),
    ("/invocations", json.dumps({"instances": [[1.0, [2.0], 2.0]]}).encode(), 400, "feature 'x2': expected a number"),
    ("/invocations", b'{"instances": [[1.0, 2.0, NaN]]}', 400, "feature 'x3': value nan is not finite"),
    ("/invocations", b'{"instances": [[1.0, 2.0, 3.0], [1.0, -Infinity, 2.0]]}', 400, "row 1, feature 'x2'"),
    ("/invocations", b'{"instances": [[1.0, 1e999, 2.0]]}', 400, "value inf is not finite"),
    ("/invocations", b'{"instances": [[1, 1' + b"0" * 400 + b", 2]]}", 400, "does not fit a 64-bit float"),
    ("/invocations", json.dumps({"instances": []}).encode(), 400, "non-empty list of rows"),
    ("/invocations", json.dumps({"dataframe_records": [{"x1": 1, "x2": 2}]}).encode(), 400, "missing feature(s) x3"),
    (
        "/invocations",
        json.dumps({"dataframe_split": {"columns": ["x1", "x2", "zz"], "data": [[1, 2, 3]]}}).encode(),
        400,
        "unknown feature(s) zz",
    ),
    (
        "/invocations",
        json.dumps({"instances": [[1.0, 2.0, 3.0]] * 101}).encode(),
        413,
        "101 rows exceed the limit of 100",
    ),
    (
        "/invocations",
        b'{"instances": [' + b"[1.0, 2.0, 3.0]," * 2000 + b"[1, 2, 3]]}",
        413,
        "exceeds the limit of 20000",
    ),
    ("/v2/models/tiny/infer", json.dumps({"inputs": []}).encode(), 400, "non-empty 'inputs'"),
    (
        "/v2/models/tiny/infer",
        json.dumps({"inputs": [{"name": "i", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]}).encode(),
        400,
        "expected [rows, 3]",
    ),
    (
        "/v2/models/tiny/infer",
        json.dumps({"inputs": [{"name": "i", "shape": [2, 3], "datatype": "FP64", "data": [1, 2, 3]}]}).encode(),
        400,
        "has 3 values, but its shape [2, 3] needs 6",
    ),
    (
        "/v2/models/tiny/infer",
        json.dumps({"inputs": [{"name": "i", "shape": [1, 3], "datatype": "BYTES", "data": ["a", "b", "c"]}]}).encode(),
        400,
        "datatype 'BYTES'",
    ),
    (
        "/v2/models/tiny/infer",
        json.dumps({"inputs": [{"name": "i", "shape": [1, 3], "datatype": "FP64", "data": [1, "b", 3]}]}).encode(),
        400,
        "feature 'x2': expected a number",
    ),
    (
        "/v2/models/tiny/infer",
        json.dumps({"inputs": [{"name": "x1", "shape": [1], "datatype": "FP64", "data": [1]}]}).encode(),
        400,
        "missing feature(s) x2, x3",
    ),
    ("/v2/models/other/infer", json.dumps(V2_BODIES["one flat tensor"]).encode(), 404, "unknown model 'other'"),
    ("/v2/models/tiny/versions/3/infer", json.dumps(V2_BODIES["one flat tensor"]).encode(), 404, "no version '3'"),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), BAD, ids=[f"{b[2]}-{b[3]}" for b in BAD])
def test_bad_requests_get_a_4xx_naming_the_problem(
    client: TestClient, path: str, body: bytes, status: int, message: str
) -> None:
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    answer = response.json()
    text = answer["message"] if path == "/invocations" else answer["error"]
    assert message in text
    if path == "/invocations":
        assert answer["error_code"] in {"BAD_REQUEST", "RESOURCE_DOES_NOT_EXIST"}
    assert client.get("/v2/health/ready").status_code == 200  # still up


def test_a_declared_oversized_body_is_refused_before_it_is_read(client: TestClient) -> None:
    response = client.post("/invocations", content=b"{}", headers={"content-length": "999999999"})
    assert response.status_code == 413 and "999999999 bytes exceeds the limit" in response.json()["message"]


def test_unknown_paths_and_methods(client: TestClient) -> None:
    assert client.get("/nope").status_code == 404
    assert client.get("/invocations").status_code == 405
    assert "use POST" in client.get("/invocations").json()["message"]


def test_bearer_token_guards_everything_but_health(tiny_bundle: Path, tiny_model: Any) -> None:
    body = MLFLOW_BODIES["dataframe_split"]
    with client_for(tiny_bundle, token=TOKEN) as guarded:
        missing = guarded.post("/invocations", json=body)
        assert missing.status_code == 401 and "missing bearer token" in missing.json()["message"]
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = guarded.post("/invocations", json=body, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "invalid bearer token" in wrong.json()["message"]
        assert guarded.get("/metrics").status_code == 401
        assert guarded.post("/v2/models/tiny/infer", json=V2_BODIES["one flat tensor"]).status_code == 401
        assert guarded.get("/v2/health/ready").status_code == 200
        assert guarded.get("/v2/health/live").status_code == 200
        ok = guarded.post("/invocations", json=body, headers={"authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        assert np.allclose(ok.json()["predictions"], expected(tiny_model))


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_errors_latency_and_rows(client: TestClient) -> None:
    client.post("/invocations", json=MLFLOW_BODIES["instances rows"])
    client.post("/invocations", json=MLFLOW_BODIES["dataframe_records"])
    client.post("/invocations", content=b"{bad")
    text = client.get("/metrics").text
    labels = {"model": "tiny", "version": "7"}
    assert metric(text, "mlops_serving_requests_total", endpoint="invocations", code="200", **labels) == 2
    assert metric(text, "mlops_serving_requests_total", endpoint="invocations", code="400", **labels) == 1
    assert metric(text, "mlops_serving_errors_total", code="400", **labels) == 1
    assert metric(text, "mlops_serving_rows_scored_total", **labels) == 6
    assert metric(text, "mlops_serving_request_duration_seconds_count", endpoint="invocations", **labels) == 3
    assert metric(text, "mlops_serving_model_info", **labels) == 1
    assert "\nmlops_serving_ready 1.0\n" in text


def test_collection_writes_every_scored_row_on_shutdown(tiny_bundle: Path, tmp_path: Path, tiny_model: Any) -> None:
    collected = tmp_path / "collected"
    with client_for(tiny_bundle, collect_dir=collected) as test_client:
        for _ in range(5):
            assert test_client.post("/invocations", json=MLFLOW_BODIES["instances rows"]).status_code == 200
        test_client.post("/invocations", json={"instances": [[1.0]]})  # refused: not collected
        request_id = test_client.post(
            "/invocations", json=MLFLOW_BODIES["instances rows"], headers={"x-request-id": "mine"}
        ).headers["x-request-id"]
        assert request_id == "mine"
    rows = list(iter_collected(collected))
    assert len(rows) == 18
    assert not list(collected.glob("*.part"))
    last = [row for row in rows if row["request_id"] == "mine"]
    assert [row["row"] for row in last] == [0, 1, 2]
    assert [[row[name] for name in TINY_FEATURES] for row in last] == ROWS
    assert np.allclose([row["prediction"] for row in last], expected(tiny_model))
    assert {row["model_version"] for row in rows} == {"7"}


def test_collection_counts_dropped_rows_when_the_queue_is_full(tiny_bundle: Path, tmp_path: Path) -> None:
    model = OnnxModel(tiny_bundle).load()
    collector = RequestCollector(CollectorConfig(tmp_path / "c", queue_size=0), "tiny", "7", TINY_FEATURES)
    with TestClient(create_app(model, ServerConfig(), collector)) as test_client:
        assert test_client.post("/invocations", json=MLFLOW_BODIES["instances rows"]).status_code == 200
        text = test_client.get("/metrics").text
    assert metric(text, "mlops_serving_collection_dropped_rows_total") == 3
    assert metric(text, "mlops_serving_collected_rows_total") == 0


def test_collection_files_roll_by_rows(tmp_path: Path) -> None:
    collector = RequestCollector(CollectorConfig(tmp_path, file_rows=4, flush_seconds=0.01), "m", "1", ["a"]).start()
    for number in range(5):
        collector.submit(f"r{number}", np.array([[1.0], [2.0]]), np.array([3.0, 4.0]))
    collector.close()
    files = sorted(tmp_path.glob("requests-*.jsonl"))
    assert len(files) >= 2 and collector.written_rows == 10
    assert len(list(iter_collected(tmp_path))) == 10


def test_large_requests_are_scored_off_the_event_loop_with_the_same_answer(tiny_bundle: Path, tiny_model: Any) -> None:
    rows = np.random.default_rng(1).normal(size=(500, 3)).tolist()
    with client_for(tiny_bundle, inline_rows=10) as test_client:
        response = test_client.post("/invocations", json={"instances": rows})
    assert response.status_code == 200
    assert np.allclose(response.json()["predictions"], expected(tiny_model, rows), rtol=0, atol=1e-9)


def test_shutdown_clears_ready(tiny_bundle: Path) -> None:
    model = OnnxModel(tiny_bundle).load()
    with TestClient(create_app(model, ServerConfig())) as test_client:
        assert test_client.get("/readyz").status_code == 200
    assert model.ready is False


def random_json(rng: np.random.Generator, depth: int = 0) -> Any:
    kind = rng.integers(0, 8 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return bool(rng.integers(0, 2))
    if kind == 2:
        return float(rng.normal() * 10.0 ** int(rng.integers(-3, 300)))
    if kind == 3:
        return int(rng.integers(-(2**62), 2**62))
    if kind == 4:
        return "".join(rng.choice(list("ab1.,-eé[]{}"), rng.integers(0, 6)))
    if kind in (5, 6):
        return [random_json(rng, depth + 1) for _ in range(rng.integers(0, 5))]
    keys = ["inputs", "instances", "dataframe_split", "dataframe_records", "columns", "data", "name", "shape",
            "datatype", "x1", "x2", "x3", "params", "FP64"]  # fmt: skip
    return {str(rng.choice(keys)): random_json(rng, depth + 1) for _ in range(rng.integers(0, 4))}


def near_miss(rng: np.random.Generator) -> Any:
    """Valid requests with one part replaced by something random."""
    body = json.loads(json.dumps([*MLFLOW_BODIES.values(), *V2_BODIES.values()][rng.integers(0, 11)]))
    node = body
    while isinstance(node, dict | list) and node:
        key = rng.choice(list(node)) if isinstance(node, dict) else int(rng.integers(0, len(node)))
        if rng.random() < 0.4 or not isinstance(node[key], dict | list):
            node[key] = random_json(rng)
            break
        node = node[key]
    return body


def test_no_input_takes_the_server_down_or_gets_a_500(client: TestClient) -> None:
    rng = np.random.default_rng(20261122)
    statuses: dict[int, int] = {}
    for number in range(600):
        body = near_miss(rng) if number % 2 else {"instances": random_json(rng)} if number % 3 else random_json(rng)
        for path in ("/invocations", "/v2/models/tiny/infer"):
            response = client.post(
                path, content=json.dumps(body).encode(), headers={"content-type": "application/json"}
            )
            assert response.status_code in (200, 400, 413), (path, body, response.text)
            assert response.json()
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    raw = bytes(rng.integers(0, 256, 300, dtype=np.uint8))
    assert client.post("/invocations", content=raw).status_code == 400
    assert statuses.get(400, 0) > 500 and statuses.get(200, 0) > 0  # both refusals and near misses that still parse
    assert client.get("/v2/health/ready").status_code == 200


def test_csv_is_bounded_by_rows_too(client: TestClient) -> None:
    csv = "x1,x2,x3\n" + "1,2,3\n" * 101
    response = client.post("/invocations", content=csv, headers={"content-type": "text/csv"})
    assert response.status_code == 413 and "more than 100 rows" in response.json()["message"]


def test_chaos_knobs_fail_an_even_share_of_inference_requests_and_nothing_else(tiny_bundle: Path) -> None:
    with client_for(tiny_bundle, fault_error_share=0.3, fault_delay_ms=5) as chaotic:
        codes = [chaotic.post("/invocations", json={"instances": ROWS}).status_code for _ in range(10)]
        assert codes == [200, 200, 200, 500, 200, 200, 500, 200, 200, 500]
        assert chaotic.get("/v2/health/ready").status_code == 200  # health is never faulted
        started = time.perf_counter()
        chaotic.post("/v2/models/tiny/infer", json={"inputs": [{"name": "input", "shape": [3, 3], "data": FLAT}]})
        assert (
            time.perf_counter() - started >= 0.005
        )  # a functional check: the delay was applied (sleep never ends early)
    with pytest.raises(ConfigError, match="fault_error_share must be within"):
        ServerConfig(fault_error_share=1.5)


def binary_request(header: dict[str, Any], *chunks: bytes, length: int | None = None) -> tuple[bytes, dict[str, str]]:
    """A request body of the binary tensor data extension, and its headers."""
    text = json.dumps(header).encode()
    length = len(text) if length is None else length
    return text + b"".join(chunks), {"inference-header-content-length": str(length)}


def matrix_tensor(datatype: str, size: int) -> dict[str, Any]:
    return {"name": "input", "shape": [3, 3], "datatype": datatype, "parameters": {"binary_data_size": size}}


def test_binary_inputs_and_outputs_of_every_float_width_score_like_json(client: TestClient, tiny_model: Any) -> None:
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    for datatype, dtype in (("FP64", "<f8"), ("FP32", "<f4"), ("INT64", "<i8")):
        values = np.array(ROWS).astype(dtype)
        data = values.tobytes()
        body, headers = binary_request(
            {"inputs": [matrix_tensor(datatype, len(data))], "parameters": {"binary_data_output": True}}, data
        )
        answer = client.post("/v2/models/tiny/infer", content=body, headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/octet-stream"
        length = int(answer.headers["inference-header-content-length"])
        head = json.loads(answer.content[:length])
        assert head["outputs"][0]["parameters"] == {"binary_data_size": 24} and "data" not in head["outputs"][0]
        scored = np.frombuffer(answer.content[length:], dtype="<f8")
        np.testing.assert_allclose(scored, expected(tiny_model, values.astype(float).tolist()), atol=1e-9)


def test_outputs_are_filtered_and_answered_as_json_unless_asked_otherwise(client: TestClient) -> None:
    data = np.array(ROWS).tobytes()
    body, headers = binary_request(
        {"inputs": [matrix_tensor("FP64", len(data))], "outputs": [{"name": "variable"}]}, data
    )
    answer = client.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert answer.status_code == 200 and "inference-header-content-length" not in answer.headers
    assert len(answer.json()["outputs"][0]["data"]) == 3
    body, headers = binary_request({"inputs": [matrix_tensor("FP64", len(data))], "outputs": [{"name": "proba"}]}, data)
    refused = client.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert refused.status_code == 400 and "unknown output(s) proba; this model has variable" in refused.json()["error"]


BAD_BINARY = [
    (binary_request({"inputs": [matrix_tensor("FP64", 72)]}, b"\0" * 72, length=10_000), "but the body has only"),
    (binary_request({"inputs": [matrix_tensor("FP64", 64)]}, b"\0" * 64), "needs 72 bytes, got 64"),
    (binary_request({"inputs": [matrix_tensor("FP64", 72)]}, b"\0" * 80), "8 bytes of binary data after"),
    (binary_request({"inputs": [matrix_tensor("FP64", 80)]}, b"\0" * 72), "declares 80 bytes of binary data"),
    (binary_request({"inputs": [matrix_tensor("BYTES", 72)]}, b"\0" * 72), "datatype 'BYTES'; this model takes"),
    (binary_request({"inputs": [matrix_tensor("FP64", -1)]}, b""), "binary_data_size must be a non-negative"),
    ((b"{}", {"inference-header-content-length": "ten"}), "must be a byte count"),
    (
        binary_request({"inputs": [matrix_tensor("FP64", 72)]}, np.array([[np.nan] * 3] * 3).tobytes()),
        "row 0, feature 'x1': value nan is not finite",
    ),
]


@pytest.mark.parametrize(("request_", "message"), BAD_BINARY, ids=[message for _, message in BAD_BINARY])
def test_bad_binary_requests_are_refused_naming_the_problem(
    client: TestClient, request_: tuple[bytes, dict[str, str]], message: str
) -> None:
    body, headers = request_
    answer = client.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert answer.status_code == 400 and message in answer.json()["error"], answer.text
