"""ONNX conversion and the parity gate for every family x task, without a tracking server.

Tables: diabetes (numbers, regression), tumours (mixed types with gaps, binary, string labels) and
wine with a string column and gaps added (multiclass, string labels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sklearn.pipeline import Pipeline
from sklearn.svm import SVR

from mlops.spec import CLASSIFICATION_FAMILIES, REGRESSION_FAMILIES, ModelSpec, load_spec, parse_spec
from serving.model import open_session
from tasks.export import ExportConfig, Parity, check_parity, measure_latency
from tasks.features import build_estimator, preprocessing
from tasks.onnx_convert import ExportError, to_onnx
from tasks.sample_data import diabetes_frame, tumours_frame
from tasks.train import TrainingSet
from tests.conftest import wine_frame, wine_sections, write_spec

SPECS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(scope="module")
def wine_spec(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    path = write_spec(tmp_path_factory.mktemp("specs"), "wine", **wine_sections())
    return parse_spec(path)


TABLES = {"diabetes": diabetes_frame, "tumours": tumours_frame}
CASES = [("diabetes", f) for f in REGRESSION_FAMILIES] + [
    (table, f) for table in ("tumours", "wine") for f in CLASSIFICATION_FAMILIES
]


def fitted(spec: ModelSpec, frame: pd.DataFrame, family: str) -> tuple[Any, TrainingSet, pd.DataFrame, pd.Series]:
    data = TrainingSet(frame, spec)
    x_train, y_train, x_holdout, _ = data.split()
    return build_estimator(spec, family).fit(x_train, y_train), data, x_holdout, y_train


@pytest.mark.parametrize(("table", "family"), CASES)
def test_every_family_and_task_passes_the_parity_gate(table: str, family: str, wine_spec: ModelSpec) -> None:
    spec = wine_spec if table == "wine" else load_spec(table, SPECS)
    frame = wine_frame() if table == "wine" else TABLES[table]()
    model, data, x_holdout, y_train = fitted(spec, frame, family)
    converted = to_onnx(model, data.input_columns)
    inference = open_session(converted.model.SerializeToString())
    config = ExportConfig()
    if spec.task.is_classification:
        parity = check_parity(inference, converted, model, x_holdout, 1.0, config.probability_tolerance)
        assert parity.label_agreement == 1.0
        assert [o.name for o in inference.get_outputs()] == ["label", "probabilities"]
        assert inference.get_outputs()[1].type == "tensor(double)"
        assert not converted.matrix and any(i.type == "tensor(string)" for i in inference.get_inputs())
    else:
        target_range = float(y_train.max() - y_train.min())
        parity = check_parity(inference, converted, model, x_holdout, target_range, config.parity_tolerance)
        assert converted.matrix and [i.name for i in inference.get_inputs()] == ["input"]
    assert parity.passed, parity.summary
    print(f"PARITY {table} {spec.task.value} {family}: {parity.summary}")


def test_columns_with_spaces_keep_their_names_in_the_bundle() -> None:
    spec = load_spec("tumours", SPECS)
    model, data, _, _ = fitted(spec, tumours_frame(), "logistic_regression")
    converted = to_onnx(model, data.input_columns)
    mapping = {c.column: c.name for c in converted.columns}
    assert mapping["mean radius"] == "mean_radius" and mapping["clinic"] == "clinic"
    assert [i.name for i in open_session(converted.model.SerializeToString()).get_inputs()] == list(mapping.values())


@pytest.mark.parametrize("family", ["ridge", "random_forest"])
def test_the_same_model_exports_to_the_same_bytes(family: str) -> None:
    model, data, _, _ = fitted(load_spec("diabetes", SPECS), diabetes_frame(), family)
    first, second = (to_onnx(model, data.input_columns).model.SerializeToString() for _ in range(2))
    assert first == second  # the sha256 keys image reuse and the immutable version tag


def test_trees_get_the_preprocessing_in_double_and_a_cast_before_them() -> None:
    model, data, _, _ = fitted(load_spec("tumours", SPECS), tumours_frame(), "random_forest")
    converted = to_onnx(model, data.input_columns)
    casts = [n for n in converted.model.graph.node if n.op_type == "Cast" and n.name == "to_float32"]
    imputers = [n for n in converted.model.graph.node if n.op_type == "Imputer"]
    assert casts and not imputers  # double imputation is IsNaN/Where: onnxruntime has no double Imputer


def test_a_tolerance_tighter_than_float32_trees_fails_the_gate() -> None:
    model, data, x_holdout, y_train = fitted(load_spec("diabetes", SPECS), diabetes_frame(), "random_forest")
    converted = to_onnx(model, data.input_columns)
    inference = open_session(converted.model.SerializeToString())
    parity = check_parity(inference, converted, model, x_holdout, float(y_train.max() - y_train.min()), 1e-12)
    assert not parity.passed and "parity FAILED" in parity.summary and "holdout rows" in parity.summary


def test_nan_error_or_a_different_label_never_passes() -> None:
    assert not Parity(float("nan"), 1.0, 10.0, 0).passed
    assert not Parity(0.0, 1e-5, 1.0, 100, label_agreement=0.99).passed


def test_a_model_without_a_converter_gives_a_short_error_and_keeps_the_detail() -> None:
    class Custom:
        def predict(self, x: object) -> None:
            return None

    with pytest.raises(ExportError, match="skl2onnx cannot convert Custom") as caught:
        to_onnx(Custom(), [("x", "double")])
    assert len(str(caught.value).splitlines()) <= 20 and "Traceback" in caught.value.detail


def test_an_svr_converts_but_onnxruntime_cannot_run_it() -> None:
    spec = load_spec("diabetes", SPECS)
    data = TrainingSet(diabetes_frame(), spec)
    x_train, y_train, _, _ = data.split()
    model = Pipeline([("prep", preprocessing(spec)), ("model", SVR())]).fit(x_train, y_train)
    converted = to_onnx(model, data.input_columns)
    with pytest.raises(Exception, match=r"SVMRegressor|NOT_IMPLEMENTED"):
        open_session(converted.model.SerializeToString()).run(None, converted.feeds(x_train.head(2)))


def test_latency_figures_cover_both_engines_and_every_size() -> None:
    model, data, _, _ = fitted(load_spec("tumours", SPECS), tumours_frame(), "logistic_regression")
    converted = to_onnx(model, data.input_columns)
    features = data.split()[0]
    figures = measure_latency(
        open_session(converted.model.SerializeToString()), converted, model, features, [1, 50], 0.01
    )
    assert set(figures) == {"sklearn.1", "onnx.1", "sklearn.50", "onnx.50"}
    assert all(value > 0 for value in figures.values())


def test_latency_batch_sizes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        ExportConfig(latency_batch_sizes=[1, 0])
