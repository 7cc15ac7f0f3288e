"""Sources of models trained elsewhere, without a server: what kind a source is, skops files holding only the
estimators' types, foreign ONNX graphs adapted to what the server feeds (per-column float32 and string inputs,
a float32 matrix, [rows] columns) and the graphs refused in one line (ZipMap, a classifier for a regression,
labels that are not the spec's classes)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import skops.io
from onnx import TensorProto, helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

from mlops.spec import ModelSpec, load_spec
from serving.model import open_session
from tasks.outside import SourceError, adapt_graph, graph_labels, load_skops, source_kind
from tasks.sample_data import diabetes_frame, tumours_frame
from tasks.train import TrainingSet
from tests.conftest import SHIPPED_SPECS

TUMOURS = load_spec("tumours", SHIPPED_SPECS)
DIABETES = load_spec("diabetes", SHIPPED_SPECS)


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("model.onnx", "onnx"),
        ("model.skops", "skops"),
        ("model.joblib", "pickle"),
        ("model.PKL", "pickle"),
        ("runs:/abc/model", "mlflow"),
        ("models:/churn/3", "mlflow"),
        ("s3://bucket/models/churn", "mlflow"),
    ],
)
def test_the_kind_of_a_source_is_told_by_its_name(uri: str, kind: str) -> None:
    assert source_kind(uri) == kind


def test_a_folder_holding_an_mlmodel_file_is_an_mlflow_model_and_anything_else_is_refused(tmp_path: Path) -> None:
    (tmp_path / "MLmodel").write_text("flavors: {}\n")
    assert source_kind(str(tmp_path)) == "mlflow"
    with pytest.raises(SourceError, match=r"model.h5: not a model source; give an \.onnx, \.skops"):
        source_kind("model.h5")


def test_a_skops_file_with_code_beside_the_estimator_is_refused_and_a_plain_one_loads(tmp_path: Path) -> None:
    frame = diabetes_frame()
    x, y = frame[DIABETES.feature_names], frame["target"]
    skops.io.dump(Pipeline([("model", Ridge())]).fit(x, y), tmp_path / "plain.skops")
    assert isinstance(load_skops(tmp_path / "plain.skops"), Pipeline)
    hostile = Pipeline([("call", FunctionTransformer(os.getcwd)), ("model", Ridge())])
    skops.io.dump(hostile, tmp_path / "hostile.skops")
    with pytest.raises(SourceError, match=r"holds types outside scikit-learn and the boosting libraries: \['posix"):
        load_skops(tmp_path / "hostile.skops")


def tumours_pipeline() -> tuple[Pipeline, TrainingSet]:
    data = TrainingSet(tumours_frame(), TUMOURS)
    x, y, _, _ = data.split()
    prep = ColumnTransformer(
        [
            ("numbers", SimpleImputer(), TUMOURS.numeric_features),
            ("categories", OneHotEncoder(handle_unknown="ignore"), TUMOURS.categorical_features),
        ]
    )
    return Pipeline([("prep", prep), ("model", LogisticRegression(max_iter=3000))]).fit(x, y), data


def foreign_classifier(model: Pipeline, zipmap: bool) -> object:
    """Converted outside the project: float32 numbers and strings, one input per column, as skl2onnx names them."""
    types = [
        (f.name, StringTensorType([None, 1]) if f.is_categorical else FloatTensorType([None, 1]))
        for f in TUMOURS.features
    ]
    return convert_sklearn(model, initial_types=types, options={id(model[-1]): {"zipmap": zipmap}})


def test_a_foreign_classifier_with_per_column_float32_and_string_inputs_answers_its_labels() -> None:
    model, data = tumours_pipeline()
    _, _, x_holdout, _ = data.split()
    converted = adapt_graph(foreign_classifier(model, zipmap=False), TUMOURS)  # type: ignore[arg-type]
    assert converted.outputs == ("label", "probabilities") and not converted.matrix
    session = open_session(converted.model.SerializeToString())
    labels, probabilities = session.run(None, converted.feeds(x_holdout))
    assert labels.ravel().tolist() == model.predict(x_holdout).tolist()
    assert np.abs(probabilities - model.predict_proba(x_holdout)).max() < 1e-4  # float32 inputs, as exported
    graph_labels(labels, TUMOURS, ["benign", "malignant"])


def test_probabilities_as_a_zipmap_are_refused_saying_how_to_convert_without_one() -> None:
    model, _ = tumours_pipeline()
    with pytest.raises(SourceError, match=r"ZipMap .* convert it without one"):
        adapt_graph(foreign_classifier(model, zipmap=True), TUMOURS)  # type: ignore[arg-type]


def test_a_classifier_graph_for_a_regression_spec_and_codes_for_string_classes_are_refused() -> None:
    model, _ = tumours_pipeline()
    graph = foreign_classifier(model, zipmap=False)
    raw = TUMOURS.model_dump(mode="json")
    raw.update(task="regression", target={"column": "diagnosis"}, promotion={}, training={"families": ["ridge"]})
    regression = ModelSpec.model_validate(raw)
    with pytest.raises(SourceError, match="a classifier's outputs; the spec's task is regression"):
        adapt_graph(graph, regression)  # type: ignore[arg-type]
    with pytest.raises(SourceError, match=r"labels \['0', '1'\], which are not the spec's classes"):
        graph_labels(np.array([0, 1, 1]), TUMOURS, ["benign", "malignant"])


def test_a_float32_matrix_and_columns_of_shape_rows_are_fed_as_the_server_feeds_them() -> None:
    frame = diabetes_frame()
    x, y = frame[DIABETES.feature_names], frame["target"]
    ridge = Ridge().fit(x.to_numpy(), y)
    matrix = convert_sklearn(ridge, initial_types=[("X", FloatTensorType([None, 10]))])
    converted = adapt_graph(matrix, DIABETES)
    assert converted.matrix and converted.outputs == ("variable",)
    [values] = open_session(converted.model.SerializeToString()).run(None, converted.feeds(x.head(50)))
    assert np.abs(values.ravel() - ridge.predict(x.head(50).to_numpy())).max() < 1e-3

    two = ModelSpec.model_validate({**DIABETES.model_dump(mode="json"), "features": [{"name": "bmi"}, {"name": "bp"}]})
    graph = helper.make_graph(
        [helper.make_node("Add", ["bmi", "bp"], ["total"])],
        "sum",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None]) for name in ("bmi", "bp")],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [None])],
    )
    summed = adapt_graph(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), two)
    [total] = open_session(summed.model.SerializeToString()).run(None, summed.feeds(x.head(5)))
    assert np.allclose(total.ravel(), (x["bmi"] + x["bp"]).head(5), rtol=1e-6)


def test_a_graph_missing_a_feature_or_taking_one_more_is_refused_naming_it() -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["bmi"], ["out"])],
        "one",
        [helper.make_tensor_value_info("bmi", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 1])],
    )
    two = ModelSpec.model_validate({**DIABETES.model_dump(mode="json"), "features": [{"name": "bmi"}, {"name": "bp"}]})
    with pytest.raises(SourceError, match=r"lack the spec's feature 'bp'"):
        adapt_graph(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), two)
