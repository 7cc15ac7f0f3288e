"""Whole rows at the endpoint: a request may carry the spec's row ids and ignored columns beside the features.

Through the app's ASGI interface, on bundles of every kind trained on tables with ids and ignored
columns (:mod:`tests.bundles`): ids are never fed to the model, are answered beside each prediction
(``/invocations``: an ``ids`` object of columns; v2: an output per id, echoed as sent) and collected
with the rows (readable by ``iter_collected``, the monitor's ``load_requests`` and ``mlops trace``);
ignored columns are dropped; any other column is still refused with one line naming it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from starlette.testclient import TestClient

from serving.bundle import METADATA_FILE, ModelMetadata, read_bundle
from serving.collector import collected_files, iter_collected
from tasks.collected import load_requests
from tasks.sample_data import client_records
from tasks.trace import find_served
from tests.bundles import Kind, every_kind
from tests.unit.test_serving_app import client_for

WITH_IDS = ["clinic", "progression", "tumours", "cellar"]


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Kind]:
    return every_kind(tmp_path_factory.mktemp("kinds"))


@pytest.fixture(params=WITH_IDS)
def kind(request: pytest.FixtureRequest, kinds: dict[str, Kind]) -> Kind:
    return kinds[request.param]


@pytest.fixture
def client(kind: Kind) -> Iterator[TestClient]:
    with client_for(kind.bundle) as test_client:
        yield test_client


def mlflow_bodies(rows: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Whole rows in every JSON format of MLflow's scoring protocol, columns in another order than the table's."""
    records = client_records(rows)
    columns = list(rows.columns)[::-1]
    return {
        "dataframe_split": {
            "dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in records]}
        },
        "dataframe_records": {"dataframe_records": records},
        "instances records": {"instances": records},
        "inputs columns": {"inputs": {c: [r[c] for r in records] for c in columns}},
    }


def assert_answers(kind: Kind, predictions: list[Any], rows: pd.DataFrame | None = None) -> None:
    expected = kind.predictions(rows)
    if kind.classifier:
        assert predictions == expected
    else:
        np.testing.assert_allclose(predictions, expected, rtol=0, atol=1e-6)


def sent_ids(kind: Kind, rows: pd.DataFrame | None = None) -> dict[str, list[Any]]:
    records = client_records(kind.rows if rows is None else rows)
    return {name: [record[name] for record in records] for name in kind.spec.ids}


@pytest.mark.parametrize("form", ["dataframe_split", "dataframe_records", "instances records", "inputs columns"])
def test_whole_rows_are_scored_and_their_ids_answered_beside_the_predictions(
    kind: Kind, client: TestClient, form: str
) -> None:
    assert set(kind.spec.ids) | set(kind.spec.ignore) <= set(kind.rows.columns)
    answer = client.post("/invocations", json=mlflow_bodies(kind.rows)[form])
    assert answer.status_code == 200, answer.text
    assert set(answer.json()) == {"predictions", "ids"}
    assert_answers(kind, answer.json()["predictions"])
    assert answer.json()["ids"] == sent_ids(kind)  # every id column, in the spec's order, values as sent


def test_csv_rows_with_ids_answer_the_ids_as_their_text(kind: Kind, client: TestClient) -> None:
    answer = client.post("/invocations", content=kind.rows.to_csv(index=False), headers={"content-type": "text/csv"})
    assert answer.status_code == 200, answer.text
    assert_answers(kind, answer.json()["predictions"])
    assert answer.json()["ids"] == {name: [str(value) for value in kind.rows[name]] for name in kind.spec.ids}


def test_ids_are_never_fed_to_the_model_and_rows_without_them_answer_as_before(kind: Kind, client: TestClient) -> None:
    features = kind.rows[list(kind.spec.feature_names)]
    bare = client.post("/invocations", json={"dataframe_records": client_records(features)})
    assert bare.status_code == 200 and set(bare.json()) == {"predictions"}
    changed = kind.rows.copy()
    for name in kind.spec.ids:  # other ids, other notes: the same predictions
        changed[name] = changed[name].astype(str) + "-other"
    for name in kind.spec.ignore:
        changed[name] = "something else entirely"
    whole = client.post("/invocations", json={"dataframe_records": client_records(changed)})
    assert whole.status_code == 200, whole.text
    assert whole.json()["predictions"] == bare.json()["predictions"]
    assert whole.json()["ids"] == sent_ids(kind, changed)


def test_some_ids_or_only_ignored_columns_are_fine_too(kinds: dict[str, Kind]) -> None:
    kind = kinds["cellar"]  # two id columns: bottle (text), lot (integer)
    records = client_records(kind.rows.head(3))
    with client_for(kind.bundle) as test_client:
        first = test_client.post("/invocations", json={"dataframe_records": [{**records[0], "lot": None}]})
        assert first.status_code == 200 and first.json()["ids"] == {"bottle": ["B0000"], "lot": [None]}
        partly = [records[0], {k: v for k, v in records[1].items() if k != "bottle"}]
        answer = test_client.post("/invocations", json={"dataframe_records": partly})
        assert answer.status_code == 200 and answer.json()["ids"] == {"bottle": ["B0000", None], "lot": [7, 7]}
        noted = kind.rows.head(2).drop(columns=list(kind.spec.ids))
        ignored_only = test_client.post("/invocations", json={"dataframe_records": client_records(noted)})
        assert ignored_only.status_code == 200 and set(ignored_only.json()) == {"predictions"}


def test_a_column_the_spec_does_not_name_is_still_refused_in_one_line(kind: Kind, client: TestClient) -> None:
    target = kind.spec.target.column
    whole = kind.rows.assign(**{target: 1, "surprise": "x"})
    for form, body in mlflow_bodies(whole).items():
        answer = client.post("/invocations", json=body)
        assert answer.status_code == 400, form
        message = answer.json()["message"]
        assert "\n" not in message and "unknown feature(s)" in message and "surprise" in message, message
        assert target in message, message  # the target is not an input either
        assert f"a row may also carry {', '.join(kind.spec.ids)} (ids)" in message, message
        assert f"{', '.join(kind.spec.ignore)} (ignored)" in message, message
    csv = client.post("/invocations", content=whole.to_csv(index=False), headers={"content-type": "text/csv"})
    assert csv.status_code == 400 and "unknown feature(s)" in csv.json()["message"]


def test_a_model_without_ids_refuses_an_id_column(kinds: dict[str, Kind]) -> None:
    rows = kinds["tumours"].rows  # patient_id means nothing to diabetes
    diabetes = kinds["diabetes"]
    with client_for(diabetes.bundle) as test_client:
        whole = diabetes.rows.assign(patient_id=rows["patient_id"])
        answer = test_client.post("/invocations", json={"dataframe_records": client_records(whole)})
    assert answer.status_code == 400
    assert answer.json()["message"].startswith(
        "dataframe_records row 0: unknown feature(s) patient_id (the model takes"
    )


BAD = [
    ({"dataframe_records": [{"patient_id": {"nested": 1}}]}, "id 'patient_id': expected text or a number, got"),
    ({"dataframe_split": {"columns": ["patient_id", "patient_id"], "data": [["a", "b"]]}}, "repeated column names"),
    ({"dataframe_split": {"columns": ["patient_id"], "data": [["a", "b"]]}}, "row 0: expected a list of"),
]


@pytest.mark.parametrize(("change", "message"), BAD, ids=[message for _, message in BAD])
def test_bad_ids_get_one_line_naming_the_problem(kinds: dict[str, Kind], change: dict[str, Any], message: str) -> None:
    kind = kinds["tumours"]
    record = client_records(kind.rows.head(1))[0]
    body: dict[str, Any]
    if "dataframe_records" in change:
        body = {"dataframe_records": [{**record, **change["dataframe_records"][0]}]}
    else:
        features = [name for name in record if name != "patient_id"]
        split = change["dataframe_split"]
        columns = [*features, *split["columns"]]
        body = {"dataframe_split": {"columns": columns, "data": [[*(record[f] for f in features), *split["data"][0]]]}}
    with client_for(kind.bundle) as test_client:
        answer = test_client.post("/invocations", json=body)
    assert answer.status_code == 400 and message in answer.json()["message"], answer.text
    assert "\n" not in answer.json()["message"]


# --- Open Inference Protocol v2 ----------------------------------------------------------------


def v2_tensor(name: str, values: list[Any], datatype: str, binary: bool) -> tuple[dict[str, Any], bytes]:
    """One ``[rows]`` input tensor of ``values`` (JSON data, or binary: text length-prefixed, numbers little-endian;
    a gap NaN in a number, the bundle's missing string in text)."""
    tensor: dict[str, Any] = {"name": name, "shape": [len(values)], "datatype": datatype}
    if not binary:
        return {**tensor, "data": values}, b""
    if datatype == "BYTES":
        encoded = [str("__missing__" if value is None else value).encode() for value in values]
        chunk = b"".join(struct.pack("<I", len(item)) + item for item in encoded)
    else:
        numbers = [np.nan if value is None else value for value in values]
        chunk = np.array(numbers, dtype={"FP64": "<f8", "INT64": "<i8", "BOOL": "?"}[datatype]).tobytes()
    return {**tensor, "parameters": {"binary_data_size": len(chunk)}}, chunk


def datatype_of(kind: Kind, column: str) -> str:
    feature = next((f for f in kind.spec.features if f.name == column), None)
    if feature is None:  # an id or ignored column: text, but for integer ids
        return "INT64" if kind.rows[column].dtype.kind == "i" else "BYTES"
    return "BYTES" if feature.is_categorical else "BOOL" if feature.kind.value == "boolean" else "FP64"


def v2_request(
    kind: Kind, columns: list[str], binary: bool, **payload: Any
) -> tuple[bytes, dict[str, str]] | dict[str, Any]:
    records = client_records(kind.rows)
    tensors, chunks = [], []
    for column in columns:
        tensor, chunk = v2_tensor(column, [r[column] for r in records], datatype_of(kind, column), binary)
        tensors.append(tensor)
        chunks.append(chunk)
    if not binary:
        return {"inputs": tensors, **payload}
    head = json.dumps({"inputs": tensors, **payload}).encode()
    return head + b"".join(chunks), {"inference-header-content-length": str(len(head))}


def infer(client: TestClient, kind: Kind, request: Any) -> Any:
    path = f"/v2/models/{kind.name}/infer"
    if isinstance(request, dict):
        return client.post(path, json=request)
    body, headers = request
    return client.post(path, content=body, headers=headers)


def outputs_of(answer: Any) -> dict[str, dict[str, Any]]:
    """The answer's outputs by name, binary data decoded into ``data``."""
    if "inference-header-content-length" not in answer.headers:
        return {output["name"]: output for output in answer.json()["outputs"]}
    length = int(answer.headers["inference-header-content-length"])
    head, offset, found = json.loads(answer.content[:length]), length, {}
    for output in head["outputs"]:
        size = output["parameters"]["binary_data_size"]
        chunk = answer.content[offset : offset + size]
        offset += size
        if output["datatype"] == "BYTES":
            values, at = [], 0
            while at < len(chunk):
                (n,) = struct.unpack_from("<I", chunk, at)
                values.append(chunk[at + 4 : at + 4 + n].decode())
                at += 4 + n
        else:
            dtype = {"FP64": "<f8", "INT64": "<i8"}[output["datatype"]]
            values = np.frombuffer(chunk, dtype=dtype).tolist()
        found[output["name"]] = {**output, "data": values}
    return found


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_v2_id_tensors_are_echoed_as_outputs_of_their_name_datatype_and_values(
    kind: Kind, client: TestClient, binary: bool
) -> None:
    features = list(kind.spec.feature_names)
    # an id first, the ignored column among the features: binary data is read in input order
    columns = [kind.spec.ids[0], *features[:2], *kind.spec.ignore, *features[2:], *kind.spec.ids[1:]]
    extra = {"parameters": {"binary_data_output": True}} if binary else {}
    answer = infer(client, kind, v2_request(kind, columns, binary, **extra))
    assert answer.status_code == 200, answer.text
    outputs = outputs_of(answer)
    model_outputs = ["label", "probabilities"] if kind.classifier else ["variable"]
    assert list(outputs) == [*model_outputs, *kind.spec.ids]
    predicted = outputs["label" if kind.classifier else "variable"]["data"]
    assert_answers(kind, predicted)
    for name in kind.spec.ids:
        echoed = outputs[name]
        assert echoed["datatype"] == datatype_of(kind, name) and echoed["shape"] == [len(kind.rows), 1]
        assert echoed["data"] == sent_ids(kind)[name]


def test_v2_one_matrix_with_an_id_tensor_before_it_in_binary(kinds: dict[str, Kind]) -> None:
    kind = kinds["clinic"]  # all numbers: one [rows, 10] matrix, the server's fast path
    features = list(kind.spec.feature_names)
    matrix = kind.rows[features].to_numpy(dtype="<f8")
    visit, visit_chunk = v2_tensor("visit", kind.rows["visit"].tolist(), "INT64", True)
    note, note_chunk = v2_tensor("comment", kind.rows["comment"].tolist(), "BYTES", True)
    tensor = {"name": "input", "shape": list(matrix.shape), "datatype": "FP64"}
    tensor["parameters"] = {"binary_data_size": matrix.nbytes}
    head = json.dumps({"inputs": [visit, tensor, note], "parameters": {"binary_data_output": True}}).encode()
    body = head + visit_chunk + matrix.tobytes() + note_chunk
    with client_for(kind.bundle) as test_client:
        answer = infer(test_client, kind, (body, {"inference-header-content-length": str(len(head))}))
    assert answer.status_code == 200, answer.text
    outputs = outputs_of(answer)
    assert_answers(kind, outputs["variable"]["data"])
    assert outputs["visit"]["datatype"] == "INT64" and outputs["visit"]["data"] == kind.rows["visit"].tolist()


def test_v2_outputs_listed_by_name_may_include_the_ids_sent_and_only_those(kinds: dict[str, Kind]) -> None:
    kind = kinds["tumours"]
    columns = ["patient_id", *kind.spec.feature_names]
    with client_for(kind.bundle) as test_client:
        wanted = {"outputs": [{"name": "patient_id"}, {"name": "label"}]}
        answer = infer(test_client, kind, v2_request(kind, columns, False, **wanted))
        assert answer.status_code == 200, answer.text
        assert [output["name"] for output in answer.json()["outputs"]] == ["label", "patient_id"]
        unsent = infer(test_client, kind, v2_request(kind, list(kind.spec.feature_names), False, **wanted))
        assert unsent.status_code == 400
        assert unsent.json()["error"] == (
            "output(s) patient_id echo the input of that name, which this request does not send"
        )
        unknown = infer(test_client, kind, v2_request(kind, columns, False, outputs=[{"name": "diagnosis"}]))
        assert unknown.status_code == 400 and unknown.json()["error"] == (
            "unknown output(s) diagnosis; this model has label, probabilities "
            "and the row id(s) patient_id echoed from the inputs"
        )


def bad_v2(kind: Kind, change: str) -> dict[str, Any]:
    request = v2_request(kind, ["patient_id", *kind.spec.feature_names, "referral_note"], False)
    assert isinstance(request, dict)
    tensors = request["inputs"]
    if change == "rows":
        tensors[0] = {**tensors[0], "shape": [2], "data": tensors[0]["data"][:2]}
    elif change == "number":
        tensors[0] = {**tensors[0], "data": [17, *tensors[0]["data"][1:]]}
    elif change == "ignored rows":
        tensors[-1] = {**tensors[-1], "shape": [1], "data": ["x"]}
    elif change == "twice":
        tensors.append(tensors[0])
    elif change == "unknown":
        tensors.append({"name": "diagnosis", "shape": [len(kind.rows)], "datatype": "BYTES", "data": ["x"] * 12})
    return request


BAD_V2 = [
    ("rows", "input 'patient_id' has 2 rows, but the feature tensors have 12"),
    ("number", "input 'patient_id' (a row id), row 0: 17 is not BYTES"),
    ("ignored rows", "input 'referral_note' has 1 rows, but the feature tensors have 12"),
    ("twice", "input tensor names must be unique"),
    ("unknown", "inputs: unknown feature(s) diagnosis (the model takes mean radius"),
]


@pytest.mark.parametrize(("change", "message"), BAD_V2, ids=[change for change, _ in BAD_V2])
def test_bad_v2_id_tensors_get_one_line_naming_the_problem(kinds: dict[str, Kind], change: str, message: str) -> None:
    kind = kinds["tumours"]
    with client_for(kind.bundle) as test_client:
        answer = infer(test_client, kind, bad_v2(kind, change))
    assert answer.status_code == 400 and answer.json()["error"].startswith(message), answer.text
    assert "\n" not in answer.json()["error"]


# --- collection: the ids with the rows ---------------------------------------------------------


def collected_lines(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in collected_files(folder) for line in path.read_text().splitlines()[1:]]


@pytest.mark.parametrize("name", ["clinic", "tumours", "cellar"])
def test_ids_are_collected_with_the_rows_and_read_back_by_the_monitor_and_trace(
    kinds: dict[str, Kind], tmp_path: Path, name: str
) -> None:
    kind = kinds[name]
    whole, bare = kind.rows.head(3), kind.rows.iloc[3:5][list(kind.spec.feature_names)]
    with client_for(kind.bundle, collect_dir=tmp_path) as test_client:
        headers = {"x-request-id": "whole"}
        body = {"dataframe_records": client_records(whole)}
        assert test_client.post("/invocations", json=body, headers=headers).status_code == 200
        body = {"dataframe_records": client_records(bare)}
        assert test_client.post("/invocations", json=body, headers={"x-request-id": "bare"}).status_code == 200
        v2 = v2_request(kind, [*kind.spec.ids, *kind.spec.feature_names], False)
        answer = test_client.post(f"/v2/models/{kind.name}/infer", json=v2, headers={"x-request-id": "v2"})
        assert answer.status_code == 200, answer.text
    header = json.loads(collected_files(tmp_path)[0].read_text().splitlines()[0])["header"]
    assert header["ids"] == list(kind.spec.ids)
    lines = collected_lines(tmp_path)
    assert [line["request_ids"] for line in lines] == [["whole"], ["bare"], ["v2"]]
    assert "ids" not in lines[1]  # a request without ids is collected as before

    rows = list(iter_collected(tmp_path))
    by_request = {rid: [row for row in rows if row["request_id"] == rid] for rid in ("whole", "bare", "v2")}
    for name_ in kind.spec.ids:
        assert [row[name_] for row in by_request["whole"]] == sent_ids(kind, whole)[name_]
        assert [row[name_] for row in by_request["bare"]] == [None, None]
        assert [row[name_] for row in by_request["v2"]] == sent_ids(kind)[name_]
    assert not any(ignored in row for row in rows for ignored in kind.spec.ignore)  # dropped, not collected

    frame = load_requests(tmp_path, since=0)
    assert list(frame.columns[4 : 4 + len(kind.spec.ids)]) == list(kind.spec.ids)
    first = frame[frame["request_id"] == "whole"]
    assert first[kind.spec.ids[0]].tolist() == sent_ids(kind, whole)[kind.spec.ids[0]]
    assert frame[frame["request_id"] == "bare"][kind.spec.ids[0]].isna().all()
    assert_answers(kind, first["prediction"].tolist(), whole)

    traced = find_served("whole", collected_files(tmp_path))
    assert traced is not None
    assert [row[kind.spec.ids[0]] for row in traced.rows] == sent_ids(kind, whole)[kind.spec.ids[0]]


def test_requests_with_and_without_ids_in_one_model_call_keep_each_rows_ids(tmp_path: Path) -> None:
    from serving.collector import CollectorConfig, RequestCollector

    collector = RequestCollector(CollectorConfig(tmp_path, flush_seconds=0.01), "m", "1", ["x"], (), ["patient_id"])
    collector.start()
    matrix = np.arange(5.0).reshape(5, 1)
    sent = [{"patient_id": ["P1", "P2"]}, None, {"patient_id": ["P3", None]}]
    collector.submit_call(["a", "b", "c"], [2, 1, 2], matrix, matrix[:, 0], row_ids=sent)
    collector.close()
    expected = ["P1", "P2", None, "P3", None]
    assert [row["patient_id"] for row in iter_collected(tmp_path)] == expected
    assert [row["request_id"] for row in iter_collected(tmp_path)] == ["a", "a", "b", "c", "c"]
    assert load_requests(tmp_path, since=0)["patient_id"].tolist() == expected


def test_a_bundle_written_before_ids_were_recorded_still_serves_and_refuses_them(
    kinds: dict[str, Kind], tmp_path: Path
) -> None:
    kind = kinds["tumours"]
    old = tmp_path / "old"
    old.mkdir()
    (old / "model.onnx").write_bytes((kind.bundle / "model.onnx").read_bytes())
    raw = json.loads((kind.bundle / METADATA_FILE).read_text())
    del raw["ids"], raw["ignore"]
    (old / METADATA_FILE).write_text(json.dumps(raw))
    _, metadata = read_bundle(old)
    assert (metadata.ids, metadata.ignore) == ((), ())
    assert ModelMetadata.from_json(metadata.to_json()) == metadata
    with client_for(old) as test_client:
        features = kind.rows[list(kind.spec.feature_names)]
        bare = test_client.post("/invocations", json={"dataframe_records": client_records(features)})
        assert bare.status_code == 200 and bare.json()["predictions"] == kind.predictions()
        whole = test_client.post("/invocations", json={"dataframe_records": client_records(kind.rows)})
        assert whole.status_code == 400 and "unknown feature(s) patient_id, referral_note" in whole.json()["message"]
        assert test_client.get("/v2/models/tumours").json()["parameters"]["ids"] == []


@pytest.mark.parametrize("name", ["clinic", "tumours"])
def test_damaged_whole_rows_get_a_4xx_never_a_500(kinds: dict[str, Kind], name: str) -> None:
    """Whole-row requests (both protocols) with one part replaced by random JSON: ids, ignored columns and features
    alike; the server answers 200 or a 4xx with a message, and stays ready."""
    from tests.unit.test_serving_app import random_json

    kind = kinds[name]
    rows = kind.rows.head(3)
    columns = [*kind.spec.ids, *kind.spec.feature_names, *kind.spec.ignore]
    valid = [
        *mlflow_bodies(rows).values(),
        v2_request(Kind(kind.name, kind.bundle, kind.model, kind.spec, rows), columns, False),
    ]
    rng = np.random.default_rng(20261208)
    statuses: dict[int, int] = {}
    with client_for(kind.bundle) as test_client:
        for number in range(400):
            body = json.loads(json.dumps(valid[number % len(valid)]))
            node = body
            while isinstance(node, dict | list) and node:
                key = rng.choice(list(node)) if isinstance(node, dict) else int(rng.integers(0, len(node)))
                if rng.random() < 0.3 or not isinstance(node[key], dict | list):
                    node[key] = random_json(rng)
                    break
                node = node[key]
            path = f"/v2/models/{name}/infer" if "inputs" in body and number % len(valid) == 4 else "/invocations"
            answer = test_client.post(
                path, content=json.dumps(body).encode(), headers={"content-type": "application/json"}
            )
            assert answer.status_code in (200, 400, 413), (path, body, answer.text)
            text = answer.json().get("message") or answer.json().get("error") or ""
            assert answer.status_code == 200 or (text and "\n" not in text), answer.text
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
        assert test_client.get("/v2/health/ready").status_code == 200
    assert statuses.get(400, 0) > 100 and statuses.get(200, 0) > 20, statuses
