"""Batch scoring of whole rows: each row's ids come out beside its prediction, in scored parts and quarantine.

``score_file`` (what the batch flow and its Dask workers run per input file) on CSV files of whole
rows — ids, features, ignored columns — for the numeric-matrix regression with an integer id and the
mixed-type classifier with a text id; a few rows broken so that quarantine holds some of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serving.bundle import read_bundle
from serving.model import open_session
from tasks.batch import REJECTED, RowParallelSession, batch_schema, read_scores, score_file
from tests.bundles import Kind, every_kind


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Kind]:
    return every_kind(tmp_path_factory.mktemp("kinds"))


@pytest.mark.parametrize("name", ["clinic", "tumours", "cellar"])
def test_each_scored_or_refused_row_keeps_its_ids_beside_its_answer(
    kinds: dict[str, Kind], tmp_path: Path, name: str
) -> None:
    kind = kinds[name]
    rows = pd.concat([kind.rows] * 3, ignore_index=True)  # 36 rows over chunks of 10
    id_name = kind.spec.ids[0]  # unique ids again: text or integers, as the table has them
    text = rows[id_name].dtype == object
    rows[id_name] = [f"row-{n}" for n in range(len(rows))] if text else np.arange(len(rows)) + 5000
    broken = rows.copy()
    first = kind.spec.features[0].name
    broken[first] = broken[first].astype(object)
    broken.loc[[4, 17], first] = "not a number"
    source = tmp_path / "whole.csv"
    broken.to_csv(source, index=False)
    model_file, metadata = read_bundle(kind.bundle)
    with RowParallelSession(open_session(str(model_file)), 1) as session:
        done = score_file(session, metadata, batch_schema(metadata), source, tmp_path / "out", 10, "1")
    assert (done.scored, done.rejected) == (len(rows) - 2, 2)

    scores = read_scores(tmp_path / "out")
    kept = rows.drop(index=[4, 17]).reset_index(drop=True)
    for column in kind.spec.ids:  # beside each prediction, in the input's order
        assert scores[column].tolist() == kept[column].tolist()
    columns = list(scores.columns)
    assert columns.index(kind.spec.ids[0]) < columns.index("prediction")
    predicted = kind.predictions(kept)
    if kind.classifier:
        assert scores["prediction"].tolist() == predicted
    else:
        np.testing.assert_allclose(scores["prediction"], predicted, rtol=0, atol=1e-6)
    assert scores["request_id"].tolist() == [f"whole:{n}" for n in range(len(rows)) if n not in (4, 17)]

    rejected = pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / "out" / REJECTED).glob("*.parquet")))
    assert rejected[kind.spec.ids[0]].tolist() == rows.loc[[4, 17], kind.spec.ids[0]].tolist()
    assert all("number" in reason for reason in rejected["reason"])  # the numeric model says it less precisely
