"""The Open Inference Protocol model metadata (``GET /v2/models/{name}``) declares what ``infer`` takes and answers.

For every bundle kind — an all-numeric regression on one matrix (with and without row ids), a typed
regression, a binary classifier with text labels, a multiclass classifier with integer labels and
two ids, and a classifier on one numeric matrix with integer labels — a request is built from the
metadata alone (its inputs' names, datatypes, shapes and parameters; the table's columns by name),
sent as JSON and as binary tensor data, and its answer compared with the declared outputs (names,
datatypes, shapes, class names) and with scikit-learn's predictions. A null is accepted exactly where
an input is declared nullable.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from tests.bundles import Kind, every_kind
from tests.conftest import TINY_FEATURES, TINY_ROWS, write_tiny_bundle
from tests.unit.test_serving_app import client_for
from tests.unit.test_serving_whole_rows import outputs_of

NUMPY = {"FP64": "<f8", "INT64": "<i8", "BOOL": "?"}


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Kind]:
    return every_kind(tmp_path_factory.mktemp("kinds"))


def cell(value: Any) -> Any:
    return None if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)) else value


def as_declared(values: list[Any], datatype: str, parameters: dict[str, Any], binary: bool) -> list[Any]:
    """A column's values in the declared datatype; a gap as null (JSON) or, in binary data, NaN for a number and
    the declared ``missing`` text for a category."""
    if datatype == "BYTES":
        gap = parameters.get("missing") if binary else None
        return [gap if cell(v) is None else str(v.item() if isinstance(v, np.generic) else v) for v in values]
    if datatype == "BOOL":
        return [bool(v) for v in values]
    return [(np.nan if binary else None) if cell(v) is None else float(v) for v in values]


def request_from_metadata(metadata: dict[str, Any], rows: pd.DataFrame, binary: bool) -> Any:
    """An infer request built from the metadata alone: each declared input filled from the table's columns."""
    tensors, chunks = [], []
    for declared in metadata["inputs"]:
        parameters = declared.get("parameters", {})
        shape = [len(rows), *declared["shape"][1:]]
        if "columns" in parameters:  # one matrix of these columns
            matrix = rows[parameters["columns"]].to_numpy(dtype="float64")
            values = [None if np.isnan(v) and not binary else float(v) for v in matrix.reshape(-1)]
        else:
            values = as_declared(rows[declared["name"]].tolist(), declared["datatype"], parameters, binary)
        tensor: dict[str, Any] = {"name": declared["name"], "datatype": declared["datatype"], "shape": shape}
        if not binary:
            tensors.append({**tensor, "data": values})
            continue
        if declared["datatype"] == "BYTES":
            encoded = [str(v).encode() for v in values]
            chunk = b"".join(struct.pack("<I", len(item)) + item for item in encoded)
        else:
            chunk = np.array(values, dtype=NUMPY[declared["datatype"]]).tobytes()
        tensors.append({**tensor, "parameters": {"binary_data_size": len(chunk)}})
        chunks.append(chunk)
    if not binary:
        return {"inputs": tensors}
    head = json.dumps({"inputs": tensors, "parameters": {"binary_data_output": True}}).encode()
    return head + b"".join(chunks), {"inference-header-content-length": str(len(head))}


def assert_declared_is_answered(
    metadata: dict[str, Any], answer: Any, rows: pd.DataFrame, labels: list[Any], probabilities: np.ndarray | None
) -> None:
    declared = {output["name"]: output for output in metadata["outputs"]}
    outputs = outputs_of(answer)
    assert list(outputs) == list(declared)  # every declared output (the ids were sent), in the declared order
    for name, output in outputs.items():
        assert output["datatype"] == declared[name]["datatype"], name
        assert [len(rows), *declared[name]["shape"][1:]] == output["shape"], name
        assert declared[name]["shape"][0] == -1
    label = "label" if "label" in outputs else "variable"
    if probabilities is None:
        np.testing.assert_allclose(outputs[label]["data"], labels, rtol=0, atol=1e-6)
        return
    assert outputs[label]["data"] == labels
    classes = declared["probabilities"]["parameters"]["classes"]
    assert declared["label"]["parameters"]["classes"] == classes
    assert outputs["probabilities"]["parameters"]["classes"] == classes
    np.testing.assert_allclose(np.reshape(outputs["probabilities"]["data"], (len(rows), -1)), probabilities, atol=1e-6)
    assert set(labels) <= set(classes)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("name", ["diabetes", "clinic", "progression", "tumours", "cellar"])
def test_a_request_built_from_the_metadata_alone_is_answered_as_declared(
    kinds: dict[str, Kind], name: str, binary: bool
) -> None:
    kind = kinds[name]
    with client_for(kind.bundle) as client:
        metadata = client.get(f"/v2/models/{name}").json()
        assert client.get(f"/v2/models/{name}/versions/1").json() == metadata
        answer = client.post(f"/v2/models/{name}/infer", **http(request_from_metadata(metadata, kind.rows, binary)))
    assert answer.status_code == 200, answer.text
    probabilities = kind.probabilities() if kind.classifier else None
    assert_declared_is_answered(metadata, answer, kind.rows, kind.predictions(), probabilities)
    for id_name in kind.spec.ids:  # declared BYTES: answered as the text sent
        assert outputs_of(answer)[id_name]["data"] == [str(v) for v in kind.rows[id_name]]


def http(request: Any) -> dict[str, Any]:
    if isinstance(request, dict):
        return {"json": request}
    body, headers = request
    return {"content": body, "headers": headers}


def test_the_metadata_names_each_column_with_its_type_and_nullability(kinds: dict[str, Kind]) -> None:
    kind = kinds["tumours"]
    with client_for(kind.bundle) as client:
        metadata = client.get("/v2/models/tumours").json()
    declared = {item["name"]: item for item in metadata["inputs"]}
    assert list(declared) == [*kind.spec.feature_names, "patient_id"]
    for feature in kind.spec.features:
        item = declared[feature.name]
        expected = {"categorical": "BYTES", "boolean": "BOOL"}.get(feature.kind.value, "FP64")
        assert (item["datatype"], item["shape"]) == (expected, [-1]), feature.name
        assert item["parameters"]["nullable"] is feature.nullable and item["parameters"]["kind"] == feature.kind.value
    assert declared["clinic"]["parameters"]["missing"] == "__missing__"
    assert declared["patient_id"]["parameters"] == {"row_id": True, "optional": True}
    assert [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]] == [
        ("label", "BYTES", [-1, 1]),
        ("probabilities", "FP64", [-1, 2]),
        ("patient_id", "BYTES", [-1, 1]),
    ]
    assert metadata["parameters"]["ids"] == ["patient_id"] and metadata["parameters"]["ignore"] == ["referral_note"]


@pytest.mark.parametrize("name", ["diabetes", "progression", "tumours", "cellar"])
def test_a_null_is_accepted_exactly_where_an_input_is_declared_nullable(kinds: dict[str, Kind], name: str) -> None:
    kind = kinds[name]
    rows = kind.rows.head(1)
    with client_for(kind.bundle) as client:
        metadata = client.get(f"/v2/models/{name}").json()
        for index, declared in enumerate(metadata["inputs"]):
            if declared.get("parameters", {}).get("row_id"):
                continue
            request = request_from_metadata(metadata, rows, binary=False)
            tensor = request["inputs"][index]
            tensor["data"] = [None, *tensor["data"][1:]]
            answer = client.post(f"/v2/models/{name}/infer", json=request)
            parameters = declared.get("parameters", {})
            if "columns" in parameters:  # a matrix: the null lands in its first column
                nullable = parameters["columns"][0] in parameters.get("nullable", [])
            else:
                nullable = parameters["nullable"]
            assert answer.status_code == (200 if nullable else 400), (declared["name"], answer.text)


def test_a_classifier_on_one_numeric_matrix_with_integer_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    x = pd.DataFrame(rng.normal(size=(200, 3)), columns=list(TINY_FEATURES))
    y = (x["x1"] + x["x2"] > 0).astype(int) + (x["x3"] > 1).astype(int)  # 0, 1, 2
    model = LogisticRegression().fit(x, y)
    bundle = write_tiny_bundle(tmp_path / "bundle", model)
    rows = pd.DataFrame(TINY_ROWS, columns=list(TINY_FEATURES))
    with client_for(bundle) as client:
        metadata = client.get("/v2/models/tiny").json()
        assert metadata["inputs"] == [
            {"name": "input", "datatype": "FP64", "shape": [-1, 3], "parameters": {"columns": list(TINY_FEATURES)}}
        ]
        assert [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]] == [
            ("label", "INT64", [-1, 1]),
            ("probabilities", "FP64", [-1, 3]),
        ]
        for binary in (False, True):
            answer = client.post("/v2/models/tiny/infer", **http(request_from_metadata(metadata, rows, binary)))
            assert answer.status_code == 200, answer.text
            labels = model.predict(rows).tolist()
            assert_declared_is_answered(metadata, answer, rows, labels, model.predict_proba(rows))
