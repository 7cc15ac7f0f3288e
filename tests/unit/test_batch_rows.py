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


def test_rows_the_model_answers_with_a_non_finite_number_are_quarantined_not_scored(
    tiny_bundle: Path,
) -> None:
    from serving.bundle import read_bundle
    from serving.typed import TypedSchema
    from tasks.batch import NOT_FINITE_REASON, score_chunk
    from tests.conftest import TINY_FEATURES

    model_file, metadata = read_bundle(tiny_bundle)
    frame = pd.DataFrame([[1.0, 2.0, 3.0], [1e308, 1e308, 1e308], [0.0, 1.0, "x"]], columns=list(TINY_FEATURES))
    scorable, predictions, reasons = score_chunk(open_session(str(model_file)), metadata, None, frame, "f")
    assert scorable.tolist() == [True, False, False] and isinstance(predictions, np.ndarray) and len(predictions) == 1
    assert reasons is not None and reasons.tolist()[1:] == [
        NOT_FINITE_REASON,
        "a feature is missing or not a finite number",
    ]

    # the typed path (as a model with strings or gaps is scored), on the same graph
    scorable, columns, reasons = score_chunk(open_session(str(model_file)), metadata, TypedSchema(metadata), frame, "f")
    assert scorable.tolist() == [True, False, False] and reasons is not None and reasons[1] == NOT_FINITE_REASON
    assert isinstance(columns, dict) and np.allclose(columns["prediction"], predictions)


def test_a_chunk_whose_every_row_is_refused_is_quarantined_without_asking_the_model(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    from serving.bundle import read_bundle
    from serving.typed import TypedSchema
    from tasks.batch import score_chunk
    from tests.conftest import TINY_FEATURES, write_tumours_bundle

    model_file, metadata = read_bundle(tiny_bundle)
    frame = pd.DataFrame([[1.0, None, 3.0], ["x", 2.0, 3.0]], columns=list(TINY_FEATURES))
    session = open_session(str(model_file))
    scorable, predictions, _ = score_chunk(session, metadata, None, frame, "f")
    assert not scorable.any() and isinstance(predictions, np.ndarray) and predictions.shape == (0,)
    _, answered, _ = score_chunk(
        session, metadata, None, frame.assign(**{TINY_FEATURES[0]: 1.0, TINY_FEATURES[1]: 2.0}), "f"
    )
    assert isinstance(answered, np.ndarray) and predictions.dtype == answered.dtype  # one type across a folder's parts

    # a classifier's graph refuses an empty batch (ArrayFeatureExtractor): the chunk must not reach it
    model_file, metadata = read_bundle(write_tumours_bundle(tmp_path / "tumours")[0])
    rows = tumours_frame().head(2)[list(metadata.features)].assign(**{"mean radius": None})  # may not be missing
    scorable, columns, reasons = score_chunk(open_session(str(model_file)), metadata, TypedSchema(metadata), rows, "f")
    assert not scorable.any() and isinstance(columns, dict) and reasons is not None and all(reasons)
    assert {name: len(values) for name, values in columns.items()} == {
        "prediction": 0,
        "probability_benign": 0,
        "probability_malignant": 0,
    }
