"""``tritonclient.http`` against the real server process: a request built from ``get_model_metadata`` alone.

For a bundle of each kind (tests.bundles: the all-numeric matrix regression with and without row ids,
a typed regression, the mixed-type classifier with text labels, a multiclass classifier with integer
labels and two ids), the client reads the model's metadata, makes one ``InferInput`` per declared input
(its name, datatype and shape; the table's column of that name; a gap as NaN or the declared missing
text, since binary tensors hold no null), asks for every declared output, with binary data on and off,
and gets back each output in the declared datatype and shape, scikit-learn's answers, and the row ids
it sent. Whole rows on ``/invocations`` over real HTTP answer the ids too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from tasks.sample_data import client_records
from tests.bundles import Kind, every_kind
from tests.conftest import serving_process

NUMPY = {"FP64": np.float64, "BOOL": np.bool_, "BYTES": np.object_}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Kind, str]]]:
    """Every kind behind its own server process."""
    kinds = every_kind(tmp_path_factory.mktemp("kinds"))
    with ExitStack() as running:
        yield {name: (kind, running.enter_context(serving_process(kind.bundle))) for name, kind in kinds.items()}


def column_values(rows: pd.DataFrame, declared: dict[str, Any]) -> np.ndarray:
    """The declared input's values from the table (a matrix of the declared columns, or the column of its name)."""
    parameters = declared.get("parameters", {})
    if "columns" in parameters:
        return rows[parameters["columns"]].to_numpy(dtype=np.float64)
    column = rows[declared["name"]]
    if declared["datatype"] == "BYTES":
        text = [str(value.item() if isinstance(value, np.generic) else value) for value in column]
        values = np.array(text, dtype=np.object_)
        values[column.isna().to_numpy()] = parameters.get("missing", "")
        return values
    if declared["datatype"] == "BOOL":
        return column.astype(bool).to_numpy()
    return column.astype("float64").to_numpy()  # a gap is NaN


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("name", ["diabetes", "clinic", "progression", "tumours", "cellar"])
def test_tritonclient_builds_its_request_from_the_metadata_and_gets_what_it_declares(
    served: dict[str, tuple[Kind, str]], name: str, binary: bool
) -> None:
    import tritonclient.http as triton

    kind, url = served[name]
    rows = kind.rows
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    try:
        metadata = client.get_model_metadata(name)
        inputs = []
        for declared in metadata["inputs"]:
            shape = [len(rows), *declared["shape"][1:]]
            tensor = triton.InferInput(declared["name"], shape, declared["datatype"])
            values = column_values(rows, declared)
            assert values.dtype == NUMPY[declared["datatype"]], declared["name"]
            tensor.set_data_from_numpy(values, binary_data=binary)
            inputs.append(tensor)
        wanted = [triton.InferRequestedOutput(output["name"], binary_data=binary) for output in metadata["outputs"]]
        result = client.infer(name, inputs, outputs=wanted)
        for declared in metadata["outputs"]:
            output = result.get_output(declared["name"])
            assert output is not None, declared["name"]
            assert output["datatype"] == declared["datatype"], declared["name"]
            assert output["shape"] == [len(rows), *declared["shape"][1:]], declared["name"]
        predicted = result.as_numpy("label" if kind.classifier else "variable")
        assert predicted is not None
        if kind.classifier:
            labels = [v.decode() if isinstance(v, bytes) else v for v in predicted.reshape(-1).tolist()]
            assert labels == kind.predictions()
            probabilities = result.as_numpy("probabilities")
            assert probabilities is not None and np.abs(probabilities - kind.probabilities()).max() <= 1e-6
            classes = result.get_output("probabilities")["parameters"]["classes"]
            assert classes == next(o for o in metadata["outputs"] if o["name"] == "label")["parameters"]["classes"]
        else:
            np.testing.assert_allclose(predicted.reshape(-1), kind.predictions(), rtol=0, atol=1e-6)
        for id_name in kind.spec.ids:
            echoed = result.as_numpy(id_name)
            assert echoed is not None
            assert [v.decode() if isinstance(v, bytes) else v for v in echoed.reshape(-1)] == [
                str(value) for value in rows[id_name]
            ]
    finally:
        client.close()


def test_integer_ids_sent_as_int64_come_back_as_int64(served: dict[str, tuple[Kind, str]]) -> None:
    import tritonclient.http as triton

    kind, url = served["cellar"]
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    try:
        metadata = client.get_model_metadata("cellar")
        inputs = []
        for declared in metadata["inputs"]:
            datatype = "INT64" if declared["name"] == "lot" else declared["datatype"]
            tensor = triton.InferInput(declared["name"], [len(kind.rows)], datatype)
            values = kind.rows["lot"].to_numpy() if datatype == "INT64" else column_values(kind.rows, declared)
            tensor.set_data_from_numpy(values)
            inputs.append(tensor)
        result = client.infer("cellar", inputs)
        lots = result.as_numpy("lot")
        assert lots is not None and lots.dtype == np.int64 and lots.reshape(-1).tolist() == kind.rows["lot"].tolist()
        assert result.get_output("lot")["datatype"] == "INT64"
    finally:
        client.close()


def test_whole_rows_over_http_answer_the_ids_beside_the_predictions(served: dict[str, tuple[Kind, str]]) -> None:
    for name in ("clinic", "tumours"):
        kind, url = served[name]
        answer = httpx.post(f"{url}/invocations", json={"dataframe_records": client_records(kind.rows)}, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["ids"] == {n: [r[n] for r in client_records(kind.rows)] for n in kind.spec.ids}
        refused = httpx.post(
            f"{url}/invocations", json={"dataframe_records": client_records(kind.rows.assign(surprise=1))}, timeout=10
        )
        assert refused.status_code == 400 and "unknown feature(s) surprise" in refused.json()["message"]
