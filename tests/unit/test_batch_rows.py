"""A chunk's rows scored in slices at once (the batch flow's threading) answer exactly as one run does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops.spec import load_spec
from serving.model import open_session
from tasks.batch import MIN_SPLIT_ROWS, RowParallelSession
from tasks.onnx_convert import to_onnx
from tasks.sample_data import tumours_frame
from tests.unit.test_export import fitted

SPECS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.parametrize("family", ["logistic_regression", "random_forest"])
def test_row_slices_run_at_once_answer_as_one_run_in_row_order(family: str) -> None:
    model, data, x_holdout, _ = fitted(load_spec("tumours", SPECS), tumours_frame(), family)
    converted = to_onnx(model, data.input_columns)
    session = open_session(converted.model.SerializeToString())
    rows = MIN_SPLIT_ROWS * 3 + 7  # three uneven slices
    frame = x_holdout.sample(rows, replace=True, random_state=0).reset_index(drop=True)
    feeds = converted.feeds(frame)
    whole_labels, whole_probabilities = session.run(None, feeds)
    with RowParallelSession(session, 3) as parallel:
        labels, probabilities = parallel.run(None, feeds)
        small = parallel.run(["probabilities"], {name: values[:10] for name, values in feeds.items()})
    assert len(labels) == rows and np.array_equal(labels, whole_labels)
    assert np.array_equal(probabilities, whole_probabilities)
    assert np.array_equal(small[0], whole_probabilities[:10])
    assert list(labels) == list(model.predict(frame))


def test_one_worker_is_the_session_itself() -> None:
    model, data, x_holdout, _ = fitted(load_spec("tumours", SPECS), tumours_frame(), "logistic_regression")
    converted = to_onnx(model, data.input_columns)
    parallel = RowParallelSession(open_session(converted.model.SerializeToString()), 0)
    assert parallel.workers == 1
    labels, _ = parallel.run(None, converted.feeds(pd.DataFrame(x_holdout)))
    assert list(labels) == list(model.predict(x_holdout))
