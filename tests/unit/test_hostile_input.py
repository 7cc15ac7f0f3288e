"""Hostile and malformed requests get a 4xx that says what was wrong, never a 5xx: the serving app through ASGI
with the tiny numeric model and the example classifier (strings, gaps, a flag)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from mlops.spec import load_spec
from serving.collector import CollectorConfig, RequestCollector, iter_collected
from serving.protocols import MAX_DEPTH, RequestError, check_depth
from tasks.sample_data import client_records, tumours_frame
from tests.conftest import SHIPPED_SPECS, TINY_FEATURES, write_tiny_bundle, write_tumours_bundle
from tests.unit.test_serving_app import client_for

NUMERIC_PATHS = ("/invocations", "/v2/models/tiny/infer")


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


@pytest.fixture(scope="module")
def clients(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, TestClient]]:
    folder = tmp_path_factory.mktemp("bundles")
    bundles = {"tiny": write_tiny_bundle(folder / "tiny", tiny_model), "tumours": write_tumours_bundle(folder / "t")[0]}
    apps = {name: client_for(bundle) for name, bundle in bundles.items()}
    yield apps
    for app in apps.values():
        app.close()


def post(client: TestClient, path: str, body: str) -> Any:
    return client.post(path, content=body.encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize("path", NUMERIC_PATHS)
@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1_000, 100_000])
def test_deeply_nested_bodies_are_refused_with_the_limit_named(
    clients: dict[str, TestClient], path: str, depth: int
) -> None:
    reply = post(clients["tiny"], path, nested(depth))
    assert reply.status_code == 400, reply.text
    assert f"deeper than {MAX_DEPTH} levels" in reply.text


@pytest.mark.parametrize(
    "body",
    [
        '{"dataframe_split": {"columns": ["x1", "x2", "x3"], "data": ' + nested(1_000, "[1, 2, 3]") + "}}",
        '{"instances": [[1, 2, ' + nested(1_000) + "]]}",
        '{"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": ' + nested(1_000) + "}]}",
    ],
    ids=["dataframe_split rows", "instances value", "v2 data"],
)
def test_rows_nested_deep_inside_a_valid_request_are_refused(clients: dict[str, TestClient], body: str) -> None:
    path = "/v2/models/tiny/infer" if '"inputs": [{' in body else "/invocations"
    reply = post(clients["tiny"], path, body)
    assert reply.status_code == 400, reply.text
    assert f"deeper than {MAX_DEPTH} levels" in reply.text


def test_nesting_within_the_limit_gets_the_ordinary_error_not_a_crash(clients: dict[str, TestClient]) -> None:
    value = nested(MAX_DEPTH - 4)
    reply = post(clients["tiny"], "/invocations", '{"instances": [[1, 2, ' + value + "]]}")
    assert reply.status_code == 400 and "expected a number" in reply.text and len(reply.text) < 400


def tumours_body(**cells: Any) -> str:
    """A one-row ``dataframe_records`` body of the example classifier with ``cells`` replaced."""
    spec = load_spec("tumours", SHIPPED_SPECS)
    [record] = client_records(tumours_frame()[spec.feature_names].head(1))
    return json.dumps({"dataframe_records": [{**record, **cells}]})


def test_depth_hidden_from_the_byte_scan_by_brackets_in_text_is_caught_where_the_rows_are_read(
    clients: dict[str, TestClient],
) -> None:
    """The scan's first pass counts brackets in strings too, so closers in a text lower its count; the body then
    parses (orjson stops at 1024 levels itself) and the rows' reader refuses the depth."""
    data = '["' + "]" * 100 + '", ' + nested(MAX_DEPTH + 8) + "]"
    body = '{"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": ' + data + "}]}"
    reply = post(clients["tiny"], "/v2/models/tiny/infer", body)
    assert reply.status_code == 400, reply.text
    assert f"deeper than {MAX_DEPTH} levels" in reply.text


def test_depth_past_orjsons_own_bound_hidden_from_the_scan_is_refused_with_the_limit(
    clients: dict[str, TestClient],
) -> None:
    body = '{"instances": ["' + "]" * 3000 + '", ' + nested(2000) + "]}"
    reply = post(clients["tiny"], "/invocations", body)
    assert reply.status_code == 400 and f"deeper than {MAX_DEPTH} levels" in reply.text


def test_a_typed_model_refuses_a_deep_value_in_a_column(clients: dict[str, TestClient]) -> None:
    body = tumours_body(clinic="DEEP").replace('"DEEP"', nested(200))
    reply = post(clients["tumours"], "/invocations", body)
    assert reply.status_code == 400, reply.text
    assert f"deeper than {MAX_DEPTH} levels" in reply.text


def test_brackets_inside_text_values_are_not_nesting(clients: dict[str, TestClient]) -> None:
    """A category full of brackets (after an escaped quote) is a category like any other: scored."""
    reply = post(clients["tumours"], "/invocations", tumours_body(clinic='north \\" ' + "[" * 100))
    assert reply.status_code == 200, reply.text
    assert reply.json()["predictions"][0] in ("benign", "malignant")


@pytest.mark.parametrize(
    ("text", "deep"),
    [
        (nested(MAX_DEPTH), False),
        (nested(MAX_DEPTH + 1), True),
        ('["' + "[" * 100 + '"]', False),
        ('["\\"' + "[" * 100 + '"]', False),  # an escaped quote does not end the string
        ('["\\\\"' + ", " + nested(MAX_DEPTH + 1) + "]", True),  # an escaped backslash does not escape the quote
    ],
    ids=["at the limit", "over", "brackets in text", "escaped quote", "escaped backslash"],
)
def test_the_depth_check_counts_only_brackets_outside_strings(text: str, deep: bool) -> None:
    if deep:
        with pytest.raises(RequestError, match=f"deeper than {MAX_DEPTH}"):
            check_depth(text.encode())
    else:
        check_depth(text.encode())


@pytest.mark.parametrize("inline_rows", [256, 1], ids=["micro-batched", "off the event loop"])
def test_an_answer_that_overflows_is_a_422_and_is_never_collected(
    tiny_bundle: Path, tmp_path: Path, inline_rows: int
) -> None:
    collector = RequestCollector(CollectorConfig(tmp_path / "c", flush_seconds=0.01), "tiny", "7", TINY_FEATURES)
    with client_for(tiny_bundle, collector=collector, inline_rows=inline_rows) as client:
        overflow = client.post("/invocations", json={"instances": [[1.0, 2.0, 3.0], [1e308, 1e308, 1e308]]})
        v2 = client.post(
            "/v2/models/tiny/infer",
            json={"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [-1e308, 0, 0]}]},
        )
        fine = client.post("/invocations", json={"instances": [[1.0, 2.0, 3.0], [0.0, 1.0, 2.0]]})
    assert overflow.status_code == 422 and "row 1" in overflow.json()["message"]
    assert overflow.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert v2.status_code == 422 and "not a finite number" in v2.json()["error"]
    assert fine.status_code == 200 and None not in fine.json()["predictions"]
    assert [row["row"] for row in iter_collected(tmp_path / "c")] == [0, 1]  # only the good request's rows


def test_the_bearer_scheme_is_case_insensitive_and_the_token_is_not(tiny_bundle: Path) -> None:
    with client_for(tiny_bundle, token="s3cret") as client:
        body = {"instances": [[1.0, 2.0, 3.0]]}
        for scheme in ("Bearer", "bearer", "BEARER"):
            assert (
                client.post("/invocations", json=body, headers={"Authorization": f"{scheme} s3cret"}).status_code == 200
            )
        for value in ("Bearer S3CRET", "Basic s3cret", "Bearer", "s3cret"):
            assert client.post("/invocations", json=body, headers={"Authorization": value}).status_code == 401
        unknown = client.get("/v2/models/other/ready")  # open to anyone: names nothing that is served
        assert unknown.status_code == 404 and "tiny" not in unknown.text and "7" not in unknown.text
        assert client.get("/v2/models/tiny/versions/8/ready").status_code == 404
        assert client.get("/v2/models/tiny/ready").status_code == 200


def test_small_protocol_details_clients_get_wrong(clients: dict[str, TestClient]) -> None:
    client = clients["tiny"]
    csv = "\ufeffx1,x2,x3\r\n1,2,3\r\n".encode()
    for content_type in ("text/csv", "Text/CSV; charset=UTF-8"):
        reply = client.post("/invocations", content=csv, headers={"content-type": content_type})
        assert reply.status_code == 200 and len(reply.json()["predictions"]) == 1, reply.text
    gzipped = client.post(
        "/invocations", content=b"\x1f\x8b...", headers={"content-type": "application/json", "content-encoding": "gzip"}
    )
    assert gzipped.status_code == 415 and "send the body uncompressed" in gzipped.text
    tensor = {"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}
    for bad_id in (7, ["a"], {"b": 1}):
        reply = client.post("/v2/models/tiny/infer", json={"id": bad_id, "inputs": [tensor]})
        assert reply.status_code == 400 and "'id' must be a string" in reply.text
    assert client.post("/v2/models/tiny/infer", json={"id": "mine", "inputs": [tensor]}).json()["id"] == "mine"
