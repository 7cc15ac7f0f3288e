"""The endpoint router as a real process in front of real model server processes, over real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from cli.traffic import send_traffic
from tests.conftest import TINY_FEATURES, python_server, serving_process, write_tiny_bundle
from tests.integration.hostile import read_response

TOKEN = "admin-token"
ROW = [1.0, 2.0, 3.0]


@dataclass
class Endpoint:
    url: str
    servers: dict[str, str]  # deployment name -> model server URL
    expected: dict[str, float]  # deployment name -> its prediction for ROW
    state_file: Path
    http: httpx.Client  # one client: httpx builds an SSL context per client, ~30 ms here

    def admin(self, method: str, path: str, body: Any = None, token: str | None = TOKEN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.http.request(method, f"{self.url}/admin/{path}", json=body, headers=headers, timeout=60)

    def predict(self, headers: dict[str, str] | None = None, url: str | None = None) -> httpx.Response:
        return self.http.post(f"{url or self.url}/invocations", json={"instances": [ROW]}, headers=headers or {})


@pytest.fixture
def endpoint(tiny_model: Any, tmp_path: Path) -> Iterator[Endpoint]:
    """Router ``tiny`` -> v7 (weight 100); a second model server v8 (other predictions) is running, not added."""
    from sklearn.linear_model import Ridge

    x = pd.DataFrame(np.random.default_rng(1).normal(size=(50, 3)), columns=list(TINY_FEATURES))
    other = Ridge().fit(x, x.sum(axis=1) * 10 + 500)
    bundles = {
        "v7": write_tiny_bundle(tmp_path / "v7", tiny_model, "7"),
        "v8": write_tiny_bundle(tmp_path / "v8", other, "8"),
    }
    row = pd.DataFrame([ROW], columns=list(TINY_FEATURES))
    expected = {"v7": float(tiny_model.predict(row)[0]), "v8": float(other.predict(row)[0])}
    with ExitStack() as stack:
        servers = {name: stack.enter_context(serving_process(bundle)) for name, bundle in bundles.items()}
        state = tmp_path / "router" / "table.json"
        env = {**os.environ, "MLOPS_ROUTER_ADMIN_TOKEN": TOKEN, "MLOPS_ROUTER_STATE_FILE": str(state)}
        args = ["-m", "serving.router", "--model", "tiny", "--deployment", f"v7={servers['v7']}@100:7"]
        url = stack.enter_context(python_server(args, "/v2/health/ready", env))
        yield Endpoint(url, servers, expected, state, stack.enter_context(httpx.Client(timeout=30)))


def test_weights_split_traffic_and_every_answer_names_its_deployment(endpoint: Endpoint) -> None:
    answer = endpoint.predict()
    assert answer.status_code == 200
    assert answer.headers["x-mlops-deployment"] == "v7" and answer.headers["x-mlops-model-version"] == "7"
    added = endpoint.admin("POST", "deployments", {"name": "v8", "url": endpoint.servers["v8"], "version": "8"})
    assert added.status_code == 201, added.text
    assert {endpoint.predict().headers["x-mlops-deployment"] for _ in range(30)} == {"v7"}  # weight 0: no traffic

    assert endpoint.admin("PUT", "weights", {"weights": {"v7": 50, "v8": 50}}).status_code == 200
    seen: dict[str, int] = {"v7": 0, "v8": 0}
    for _ in range(300):
        answer = endpoint.predict()
        name = answer.headers["x-mlops-deployment"]
        seen[name] += 1
        assert answer.json()["predictions"][0] == pytest.approx(endpoint.expected[name], abs=1e-9)
    assert 90 < seen["v8"] < 210, seen  # 150 expected; far outside binomial noise otherwise

    v2 = endpoint.http.post(
        f"{endpoint.url}/v2/models/tiny/versions/8/infer",
        json={"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": ROW}]},
    )
    assert v2.status_code == 200 and v2.headers["x-mlops-deployment"] == "v8"
    assert v2.json()["outputs"][0]["data"][0] == pytest.approx(endpoint.expected["v8"], abs=1e-9)
    assert endpoint.http.get(f"{endpoint.url}/v2/models/tiny/versions/9").status_code == 404

    sticky = {endpoint.predict({"x-mlops-sticky": "customer-42"}).headers["x-mlops-deployment"] for _ in range(20)}
    assert len(sticky) == 1

    stats = endpoint.admin("GET", "stats?since=0").json()["deployments"]
    assert stats["v8"]["requests"] >= seen["v8"] and stats["v8"]["errors"] == 0
    assert stats["v8"]["predictions"][0] == pytest.approx(endpoint.expected["v8"], abs=1e-9)
    metrics = endpoint.http.get(f"{endpoint.url}/metrics").text
    assert 'mlops_endpoint_requests_total{code="200",deployment="v8",model="tiny",version="8"}' in metrics
    assert 'mlops_endpoint_weight{deployment="v7",model="tiny",shadow="false",version="7"} 50.0' in metrics


def test_the_admin_api_needs_its_token_and_refuses_inconsistent_changes(endpoint: Endpoint) -> None:
    assert endpoint.admin("GET", "deployments", token=None).status_code == 401
    assert endpoint.admin("GET", "deployments", token="wrong").status_code == 401
    assert endpoint.admin("PUT", "weights", {"weights": {"v7": 0}}, token="wrong").status_code == 401
    listed = endpoint.admin("GET", "deployments").json()
    assert [d["name"] for d in listed["deployments"]] == ["v7"]
    cases = [
        ("PUT", "weights", {"weights": {"nope": 1}}, 409, "no deployment named nope"),
        ("PUT", "weights", {"weights": {"v7": 0}}, 409, "traffic nowhere"),
        ("PUT", "weights", {"weights": {"v7": True}}, 400, "weight of v7 must be an integer"),
        ("PUT", "weights", {"mirror": "x"}, 400, "mirror must be a number within [0, 1], got 'x'"),
        ("PUT", "weights", {"mirror": 2}, 400, "mirror must be a number within [0, 1]"),
        ("PUT", "weights", {"wieghts": {"v7": 1}}, 400, "unknown field(s) wieghts"),
        ("PUT", "weights", [1], 400, "body must be a JSON object"),
        ("POST", "deployments", [1], 400, "body must be a JSON object"),
        ("POST", "deployments", {"name": "v7", "url": endpoint.servers["v8"]}, 409, "already exists"),
        ("POST", "deployments", {"name": "x", "url": "http://127.0.0.1:1"}, 400, "unreachable"),
        ("POST", "deployments", {"name": "x", "url": "http://127.0.0.1:99999"}, 400, "port 1-65535"),
        ("POST", "deployments", {"name": "x", "url": "http://127.0.0.1:abc"}, 400, "must be http://host:port"),
        ("POST", "deployments", {"name": "x", "url": ["http://a:1"]}, 400, "'url' must be a string"),
        ("POST", "deployments", {"name": "x", "url": "http://a:1", "shadow": "yes"}, 400, "'shadow' must be"),
        ("PUT", "deployments/v7", {"url": "http://127.0.0.1:0"}, 400, "port 1-65535"),
        ("POST", "deployments", {"name": "x"}, 400, "needs 'url'"),
        ("DELETE", "deployments/v7", None, 409, "move the weight first"),
        ("DELETE", "deployments/zz", None, 409, "no deployment named zz"),
        ("GET", "nothing", None, 404, "no admin endpoint"),
    ]
    for method, path, body, status, message in cases:
        answer = endpoint.admin(method, path, body)
        assert (answer.status_code, message in answer.json()["error"]) == (status, True), (path, answer.text)
    bad_json = endpoint.http.put(
        f"{endpoint.url}/admin/weights", content=b"{", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert bad_json.status_code == 400
    assert endpoint.predict().status_code == 200  # nothing above changed the routing
    head = endpoint.http.head(f"{endpoint.url}/v2/models/tiny", timeout=3)
    assert (head.status_code, head.content, head.headers["x-mlops-deployment"]) == (200, b"", "v7")
    assert int(head.headers["content-length"]) > 0  # a GET's headers, without its body
    assert endpoint.admin("GET", "stats?since=0").json()["deployments"]["v7"]["errors"] == 0


def test_mirrored_traffic_is_recorded_but_never_changes_the_answer(endpoint: Endpoint) -> None:
    shadow = {"name": "v8", "url": endpoint.servers["v8"], "version": "8", "shadow": True}
    assert endpoint.admin("POST", "deployments", shadow).status_code == 201
    assert endpoint.admin("PUT", "weights", {"weights": {}, "mirror": 1.0}).status_code == 200
    for _ in range(40):
        answer = endpoint.predict()
        assert answer.headers["x-mlops-deployment"] == "v7"
        assert answer.json()["predictions"][0] == pytest.approx(endpoint.expected["v7"], abs=1e-9)
    stats = endpoint.admin("GET", "stats?since=0").json()["deployments"]
    assert stats["v8"]["requests"] >= 39  # mirrors run after the answer; the last may still be in flight
    assert stats["v8"]["predictions"] == pytest.approx([endpoint.expected["v8"]] * stats["v8"]["requests"], abs=1e-9)


def test_weight_changes_and_removal_under_load_drop_no_request(endpoint: Endpoint) -> None:
    assert endpoint.admin(
        "POST", "deployments", {"name": "v8", "url": endpoint.servers["v8"], "version": "8"}
    ).is_success

    async def scenario() -> Any:
        load = asyncio.create_task(
            send_traffic(f"{endpoint.url}/invocations", lambda rng: {"instances": [ROW]}, seconds=4, concurrency=8)
        )
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as admin:
            rng = random.Random(3)
            for _ in range(30):
                weights = {"v7": rng.randint(0, 10), "v8": rng.randint(1, 10)}
                assert (await admin.put(f"{endpoint.url}/admin/weights", json={"weights": weights})).is_success
                await asyncio.sleep(0.05)
            assert (await admin.put(f"{endpoint.url}/admin/weights", json={"weights": {"v7": 0, "v8": 1}})).is_success
            removed = await admin.delete(f"{endpoint.url}/admin/deployments/v7")
            assert removed.is_success and removed.json()["drained"] is True
        return await load

    result = asyncio.run(scenario())
    assert result.requests > 200
    assert result.connection_errors == 0 and result.server_errors == 0, result.errors[:5]
    assert set(result.statuses) == {200}
    assert result.deployments["v7"] > 0 and result.deployments["v8"] > 0
    assert {endpoint.predict().headers["x-mlops-deployment"] for _ in range(10)} == {"v8"}


def test_a_restarted_router_routes_as_before(endpoint: Endpoint) -> None:
    assert endpoint.admin(
        "POST", "deployments", {"name": "v8", "url": endpoint.servers["v8"], "version": "8"}
    ).is_success
    assert endpoint.admin("PUT", "weights", {"weights": {"v7": 0, "v8": 3}}).is_success
    saved = json.loads(endpoint.state_file.read_text())
    assert [(d["name"], d["weight"]) for d in saved["deployments"]] == [("v7", 0), ("v8", 3)]
    env = {**os.environ, "MLOPS_ROUTER_ADMIN_TOKEN": TOKEN, "MLOPS_ROUTER_STATE_FILE": str(endpoint.state_file)}
    with python_server(["-m", "serving.router", "--model", "tiny"], "/v2/health/ready", env) as again:
        assert {endpoint.predict(url=again).headers["x-mlops-deployment"] for _ in range(10)} == {"v8"}


def test_a_deployment_that_refuses_connections_is_bypassed_and_counted(
    endpoint: Endpoint, tiny_model: Any, tmp_path: Path
) -> None:
    doomed = write_tiny_bundle(tmp_path / "doomed", tiny_model, "9")
    with serving_process(doomed) as url:
        assert endpoint.admin("POST", "deployments", {"name": "v9", "url": url, "version": "9"}).is_success
        assert endpoint.admin("PUT", "weights", {"weights": {"v7": 1, "v9": 1}}).is_success
    # v9's process is gone: its share of requests is retried on v7
    answers = [endpoint.predict() for _ in range(40)]
    assert {a.status_code for a in answers} == {200}
    assert {a.headers["x-mlops-deployment"] for a in answers} == {"v7"}
    stats = endpoint.admin("GET", "stats?since=0").json()["deployments"]
    assert stats["v9"]["codes"].get("502", 0) > 0 and stats["v9"]["errors"] == stats["v9"]["codes"]["502"]
    ready = endpoint.http.get(f"{endpoint.url}/v2/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"ready": True, "deployments": 2, "reachable": 1})
    # Every deployment taking traffic is dead: the endpoint says so instead of answering ready.
    assert endpoint.admin("PUT", "weights", {"weights": {"v7": 0, "v9": 1}}).is_success
    refused = endpoint.predict()  # v9 left rotation after its first connection failures: no 502 per request
    assert refused.status_code == 503 and "out of rotation" in refused.json()["error"]
    assert stats["v9"]["codes"]["502"] <= 3
    ready = endpoint.http.get(f"{endpoint.url}/readyz")
    assert (ready.status_code, ready.json()["ready"], ready.json()["reachable"]) == (503, False, 0)


def test_the_triton_client_binary_extension_passes_through_the_router(endpoint: Endpoint) -> None:
    """Binary request data and binary outputs are forwarded unchanged, and the router still reads the
    predictions it records (for the rollout's comparison) out of the binary answer."""
    import tritonclient.http as triton

    rows = np.array([ROW, [0.5, -2.0, 30.0]])
    client = triton.InferenceServerClient(endpoint.url.removeprefix("http://"))
    try:
        tensor = triton.InferInput("input", list(rows.shape), "FP64")
        tensor.set_data_from_numpy(rows, binary_data=True)
        through_router = client.infer("tiny", [tensor]).as_numpy("variable")
    finally:
        client.close()
    direct = endpoint.http.post(
        f"{endpoint.servers['v7']}/v2/models/tiny/infer",
        json={"inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP64", "data": rows.tolist()}]},
    ).json()["outputs"][0]["data"]
    assert through_router is not None
    assert through_router.reshape(-1).tolist() == pytest.approx([d[0] if isinstance(d, list) else d for d in direct])
    recorded = endpoint.admin("GET", "stats?since=0").json()["deployments"]["v7"]["predictions"]
    assert recorded[-2:] == pytest.approx(through_router.reshape(-1).tolist())


def test_mirrored_classifier_answers_are_compared_with_the_answers_clients_got(tmp_path: Path) -> None:
    """A shadow classifier that flips the labels agrees on no row; an identical one on every row."""
    from sklearn.linear_model import LogisticRegression

    x = pd.DataFrame(np.random.default_rng(3).normal(size=(200, 3)), columns=list(TINY_FEATURES))
    truth = np.where(x["x1"] + 0.2 * x["x2"] > 0, "yes", "no")
    good = LogisticRegression().fit(x, truth)
    flipped = LogisticRegression().fit(x, np.where(truth == "yes", "no", "yes"))
    bundles = {
        "stable": write_tiny_bundle(tmp_path / "stable", good, "1"),
        "same": write_tiny_bundle(tmp_path / "same", good, "2"),
        "flipped": write_tiny_bundle(tmp_path / "flipped", flipped, "3"),
    }
    with ExitStack() as stack:
        servers = {name: stack.enter_context(serving_process(bundle)) for name, bundle in bundles.items()}
        env = {**os.environ, "MLOPS_ROUTER_ADMIN_TOKEN": TOKEN}
        args = ["-m", "serving.router", "--model", "tiny", "--deployment", f"stable={servers['stable']}@100:1"]
        url = stack.enter_context(python_server(args, "/v2/health/ready", env))
        http = stack.enter_context(httpx.Client(timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}))
        for name, version in (("same", "2"), ("flipped", "3")):
            body = {"name": name, "url": servers[name], "version": version, "shadow": True}
            assert http.post(f"{url}/admin/deployments", json=body).status_code == 201
        assert http.put(f"{url}/admin/weights", json={"weights": {}, "mirror": 1.0}).is_success
        rows = x.head(40).to_numpy().tolist()
        answers = [http.post(f"{url}/invocations", json={"instances": [row]}).json()["predictions"][0] for row in rows]
        assert set(answers) == {"yes", "no"}

        def agreement() -> dict[str, dict[str, int]]:
            stats = http.get(f"{url}/admin/stats?since=0").json()["deployments"]
            return {name: stats[name]["agreement"] for name in ("same", "flipped")}

        deadline = time.monotonic() + 10  # mirrored requests are sent after the answer
        while agreement()["flipped"]["compared"] < 40 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert agreement() == {"same": {"compared": 40, "equal": 40}, "flipped": {"compared": 40, "equal": 0}}
        labels = http.get(f"{url}/admin/stats?since=0").json()["deployments"]["stable"]["predictions"]
        assert labels == answers  # the router records a classifier's labels for the rollout's chi-square


def test_a_poison_burst_from_a_client_does_not_fail_a_healthy_canary(endpoint: Endpoint) -> None:
    """Deeply nested bodies and inputs that overflow the model, sent through the router to a stable and a canary
    of the same model: 400s never count, the 422s count on both alike, and the rollout's verdict passes."""
    from tasks.rollout import RolloutConfig, Window, analyse

    added = endpoint.admin(
        "POST", "deployments", {"name": "v7b", "url": endpoint.servers["v7"], "version": "7", "weight": 50}
    )
    assert added.status_code == 201, added.text
    assert endpoint.admin("PUT", "weights", {"weights": {"v7": 50, "v7b": 50}}).status_code == 200
    since = time.time()
    deep = b"[" * 100_000 + b"]" * 100_000
    overflow = {"instances": [[1e308, 1e308, 1e308]]}
    statuses: dict[int, int] = {}
    for number in range(400):
        if number % 4 == 0:
            reply = endpoint.http.post(f"{endpoint.url}/invocations", content=deep)
        elif number % 4 == 1:
            reply = endpoint.http.post(f"{endpoint.url}/invocations", json=overflow)
        else:
            reply = endpoint.predict()
        statuses[reply.status_code] = statuses.get(reply.status_code, 0) + 1
        if reply.status_code == 400:
            assert "deeper than 32 levels" in reply.text
    assert statuses == {400: 100, 422: 100, 200: 200}, statuses
    stats = endpoint.admin("GET", f"stats?since={since}").json()["deployments"]
    canary, stable = Window.from_stats(stats["v7b"]), Window.from_stats(stats["v7"])
    assert canary.requests + stable.requests == 400 and canary.errors + stable.errors == 100  # the 422s only
    reasons, _ = analyse(canary, stable, RolloutConfig(min_requests=30, compare_predictions=False))
    assert reasons == [], reasons


def test_a_deployment_removed_while_a_body_uploads_is_not_the_one_that_answers_it(endpoint: Endpoint) -> None:
    import socket
    from urllib.parse import urlsplit

    body = json.dumps({"instances": [ROW]}).encode()
    added = endpoint.admin("POST", "deployments", {"name": "v8", "url": endpoint.servers["v8"], "version": "8"})
    assert added.status_code == 201, added.text
    parts = urlsplit(endpoint.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(body) + body[:5]
        )
        time.sleep(0.3)  # the router has the headers and waits for the rest of the body
        assert endpoint.admin("PUT", "weights", {"weights": {"v7": 0, "v8": 100}}).status_code == 200
        removed = endpoint.admin("DELETE", "deployments/v7")
        assert removed.status_code == 200 and removed.json()["drained"] is True
        sock.sendall(body[5:])
        reply = read_response(sock)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
    assert b"x-mlops-deployment: v8" in reply
    assert str(endpoint.expected["v8"])[:8].encode() in reply


def test_a_dead_deployment_leaves_rotation_readiness_says_so_and_it_returns_when_ready(
    tiny_model: Any, tmp_path: Path
) -> None:
    """Its only deployment killed, the router stops sending to it after a few connection failures (503 at once,
    not a 502 per request), says not ready, logs a few lines rather than one per request, and takes the
    deployment back by itself once a server answers ready at the same address."""
    import subprocess

    from mlops.process import free_port
    from tests.conftest import spawn_python, wait_ready

    bundle = write_tiny_bundle(tmp_path / "v7", tiny_model, "7")
    port, router_port = free_port(), free_port()

    def start_server() -> subprocess.Popen[str]:
        process = spawn_python(["-m", "serving", str(bundle)], port)
        wait_ready(process, f"http://127.0.0.1:{port}/v2/health/ready")
        return process

    server = start_server()
    env = {**os.environ, "MLOPS_ROUTER_ADMIN_TOKEN": TOKEN, "MLOPS_ROUTER_STATE_FILE": str(tmp_path / "t.json")}
    deployment = f"v7=http://127.0.0.1:{port}@100:7"
    router = spawn_python(["-m", "serving.router", "--model", "tiny", "--deployment", deployment], router_port, env)
    url = f"http://127.0.0.1:{router_port}"
    try:
        wait_ready(router, f"{url}/v2/health/ready")
        with httpx.Client(timeout=10) as http:
            assert http.post(f"{url}/invocations", json={"instances": [ROW]}).status_code == 200
            server.kill()
            server.communicate()
            codes = [http.post(f"{url}/invocations", json={"instances": [ROW]}).status_code for _ in range(500)]
            assert codes[:3] == [502, 502, 502] and set(codes[3:]) == {503}, codes[:10]
            assert http.get(f"{url}/v2/health/ready").status_code == 503
            metrics = http.get(f"{url}/metrics").text
            assert 'mlops_endpoint_ejected{deployment="v7",model="tiny",version="7"} 1.0' in metrics
            server = start_server()
            deadline = time.monotonic() + 10
            while http.get(f"{url}/v2/health/ready").status_code != 200:
                assert time.monotonic() < deadline, "the deployment never came back into rotation"
                time.sleep(0.2)
            assert http.post(f"{url}/invocations", json={"instances": [ROW]}).status_code == 200
    finally:
        for process in (router, server):
            process.terminate()
        log = router.communicate(timeout=30)[1]
        server.communicate(timeout=30)
    assert log.count("deployment v7: cannot connect") <= 2, log[-2000:]
    assert "out of rotation after 3 connection failures" in log and "back in rotation" in log
