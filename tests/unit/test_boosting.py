"""XGBoost, LightGBM and CatBoost from a team's own factory: every library x task x form trains as the flow trains
(the probe first), exports and passes the unchanged parity gate; labels of any type come back as they were; what
the export cannot reproduce is refused before training with one line.

Tables: progression (regression: categories, gaps), tumours (binary: strings, gaps, string labels), wine
(multiclass: a string column, gaps, string labels); and each of them with its numeric columns only, for a bare
model that takes the typed columns itself (gaps reach the trees as NaN).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.preprocessing import OneHotEncoder

from mlops.spec import ModelSpec, load_spec, parse_spec
from serving.model import open_session
from tasks import boosting
from tasks.boosting import EncodedLabels, MissingLibraryError, boosting_estimator, refuse_unexportable
from tasks.export import ExportConfig, Parity, check_parity
from tasks.features import build_estimator, load_factory
from tasks.onnx_convert import ExportError, to_onnx
from tasks.sample_data import progression_frame, tumours_frame
from tasks.train import TrainingSet, probe_export
from tests.conftest import SHIPPED_SPECS, wine_frame, wine_sections, write_spec

LIBRARIES = ("xgboost", "lightgbm", "catboost")
TABLES = ("progression", "tumours", "wine")
FORMS = [("bare", True), ("pipeline", True), ("pipeline", False), ("bare", False)]


def table(name: str, models: Path) -> tuple[ModelSpec, pd.DataFrame]:
    if name == "wine":
        return parse_spec(write_spec(models, "wine", **wine_sections())), wine_frame()
    return load_spec(name, SHIPPED_SPECS), {"progression": progression_frame, "tumours": tumours_frame}[name]()


def case_spec(models: Path, name: str, library: str, form: str, preprocess: bool) -> tuple[ModelSpec, pd.DataFrame]:
    spec, frame = table(name, models)
    raw = spec.model_dump(mode="json")
    if form == "bare" and not preprocess:  # the model takes the typed columns itself: numbers only
        raw["features"] = [feature for feature in raw["features"] if feature["kind"] != "categorical"]
    kind = "classifier" if spec.task.is_classification else "regressor"
    raw["training"] = {
        **raw["training"],
        "families": [],
        "grid": None,
        "pipeline": f"tests.integration.factories:{library}_{kind}_{form}",
        "preprocess": preprocess,
    }
    raw["name"] = f"{name}-{library}"
    return ModelSpec.model_validate(raw), frame


def train_and_check(spec: ModelSpec, frame: pd.DataFrame) -> tuple[Any, Parity, np.ndarray, pd.DataFrame]:
    """Probe, fit and export as the training flow does; the parity figures and the graph's first output."""
    data = TrainingSet(frame, spec)
    x_train, y_train, x_holdout, _ = data.split()
    assert spec.training.pipeline is not None
    estimator = build_estimator(spec, None, load_factory(spec.training.pipeline))
    probe_export(estimator, {}, data, x_train, y_train)
    model = clone(estimator).fit(x_train, y_train)
    converted = to_onnx(model, data.input_columns)
    session = open_session(converted.model.SerializeToString())
    config = ExportConfig()
    if spec.task.is_classification:
        parity = check_parity(session, converted, model, x_holdout, 1.0, config.probability_tolerance)
    else:
        target_range = float(y_train.max() - y_train.min())
        parity = check_parity(session, converted, model, x_holdout, target_range, config.parity_tolerance)
    first = session.run(None, converted.feeds(x_holdout))[0]
    return model, parity, first, x_holdout


@pytest.mark.parametrize(("form", "preprocess"), FORMS, ids=[f"{f}-preprocess_{p}" for f, p in FORMS])
@pytest.mark.parametrize("name", TABLES)
@pytest.mark.parametrize("library", LIBRARIES)
def test_every_library_task_and_form_trains_exports_and_passes_the_parity_gate(
    library: str, name: str, form: str, preprocess: bool, tmp_path: Path
) -> None:
    spec, frame = case_spec(tmp_path, name, library, form, preprocess)
    model, parity, first, x_holdout = train_and_check(spec, frame)
    assert parity.passed, parity.summary
    assert parity.rows == len(x_holdout) > 0
    encoders = [step for step in _steps(model) if isinstance(step, OneHotEncoder)]
    # The spec's one-hot encoding goes in front of a bare model only; a pipeline with its own ColumnTransformer
    # takes the typed columns, preprocess or not.
    assert bool(encoders) == (form == "bare" and preprocess and bool(spec.categorical_features))
    if spec.task.is_classification:
        assert parity.label_agreement == 1.0
        assert list(model.classes_) == sorted(frame[spec.target.column].unique())
        assert first.ravel().tolist() == model.predict(x_holdout).tolist()  # the labels, decoded in the graph
        assert set(first.ravel().tolist()) <= set(model.classes_)


def _steps(model: Any) -> list[Any]:
    found = [model]
    for attribute in ("steps", "transformers_"):
        for item in getattr(model, attribute, []):
            found.extend(_steps(item[1]))
    if isinstance(model, EncodedLabels):
        found.extend(_steps(model.estimator_))
    return found


@pytest.mark.parametrize("library", LIBRARIES)
def test_string_columns_reaching_a_bare_model_are_refused_before_training(library: str, tmp_path: Path) -> None:
    spec, frame = table("tumours", tmp_path)
    raw = spec.model_dump(mode="json")
    raw["training"] = {
        **raw["training"],
        "families": [],
        "pipeline": f"tests.integration.factories:{library}_classifier_bare",
        "preprocess": False,
    }
    with pytest.raises(ExportError, match=r"takes numbers only.*\['clinic', 'texture_grade'\].*preprocess: true"):
        train_and_check(ModelSpec.model_validate(raw), frame)


@pytest.mark.parametrize(
    ("estimator", "option"),
    [
        (lambda: boosting_estimator("xgboost", True, 0).set_params(enable_categorical=True), "enable_categorical"),
        (lambda: boosting_estimator("lightgbm", True, 0).set_params(categorical_feature=[0]), "categorical_feature"),
        (lambda: boosting_estimator("catboost", True, 0).set_params(cat_features=[0]), "cat_features"),
        (lambda: HistGradientBoostingClassifier(categorical_features=[0]), "categorical_features"),
    ],
    ids=["xgboost", "lightgbm", "catboost", "hist_gradient_boosting"],
)
def test_native_categorical_options_are_refused_naming_the_option_and_what_to_use(estimator: Any, option: str) -> None:
    with pytest.raises(ValueError, match=rf"with {option}.*not exported with parity.*one-hot") as refused:
        refuse_unexportable(EncodedLabels(estimator()), [])
    assert len(str(refused.value).splitlines()) == 1


@pytest.mark.parametrize("labels", [(3, 7), (False, True)], ids=["integers", "booleans"])
def test_labels_of_any_type_are_encoded_for_the_library_and_decoded_in_the_graph(labels: tuple[Any, Any]) -> None:
    spec = load_spec("tumours", SHIPPED_SPECS)
    frame = tumours_frame()
    frame["diagnosis"] = np.where(frame["diagnosis"] == "malignant", labels[1], labels[0])
    spec = spec.model_copy(update={"target": spec.target.model_copy(update={"classes": None})})
    data = TrainingSet(frame, spec)
    x_train, y_train, x_holdout, _ = data.split()
    model = build_estimator(spec, "xgboost").fit(x_train, y_train)
    assert model.classes_.tolist() == list(labels)
    converted = to_onnx(model, data.input_columns)
    answered = open_session(converted.model.SerializeToString()).run(None, converted.feeds(x_holdout))[0]
    assert answered.dtype == np.int64
    assert answered.ravel().tolist() == [int(label) for label in model.predict(x_holdout)]
    assert set(answered.ravel().tolist()) == {int(label) for label in labels}


def test_a_family_whose_library_is_missing_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boosting, "installed", lambda library: library != "catboost")
    with pytest.raises(MissingLibraryError, match=r"'catboost' needs catboost.*uv sync --extra boosting"):
        boosting_estimator("catboost", False, 0)
    assert boosting_estimator("xgboost", False, 0) is not None


def test_the_label_encoder_forwards_grid_parameters_to_the_library() -> None:
    wrapped = EncodedLabels(boosting_estimator("lightgbm", True, 0))
    clone(wrapped).set_params(n_estimators=7, num_leaves=5)
    wrapped.set_params(n_estimators=7)
    assert wrapped.estimator.get_params()["n_estimators"] == 7
    assert wrapped.get_params()["n_estimators"] == 7


@pytest.mark.parametrize("library", LIBRARIES)
def test_a_model_loaded_back_as_mlflow_stores_it_exports_the_same_graph(library: str) -> None:
    """skops, as MLflow logs our models: the loaded copy (CatBoost's then reads ``n_features_in_`` as 0)
    converts to a graph giving the same answers."""
    import skops.io

    from tasks.train import trusted_types

    spec = load_spec("tumours", SHIPPED_SPECS)
    data = TrainingSet(tumours_frame(), spec)
    x_train, y_train, x_holdout, _ = data.split()
    model = build_estimator(spec, library).fit(x_train, y_train)
    loaded = skops.io.loads(skops.io.dumps(model), trusted=trusted_types(model))
    answers = []
    for each in (model, loaded):
        converted = to_onnx(each, data.input_columns)
        answers.append(open_session(converted.model.SerializeToString()).run(None, converted.feeds(x_holdout)))
    assert answers[0][0].tolist() == answers[1][0].tolist()
    assert np.array_equal(answers[0][1], answers[1][1])


@pytest.mark.parametrize("library", LIBRARIES)
def test_a_built_in_family_without_preprocessing_searches_its_grid_on_numbers_and_refuses_strings(
    library: str, tmp_path: Path
) -> None:
    """The default grid names ``model__...``: the bare model keeps that step name, so every grid point is the
    model it names (and CatBoost, which refuses unknown options, trains at all)."""
    from tasks.train import search_family

    spec, frame = case_spec(tmp_path, "progression", library, "bare", preprocess=False)
    raw = spec.model_dump(mode="json")
    raw["training"] = {**raw["training"], "pipeline": None, "families": [library], "grid": None}
    spec = ModelSpec.model_validate(raw)
    data = TrainingSet(frame, spec)
    x_train, y_train, _, _ = data.split()
    search = search_family(data, library, None, x_train, y_train).search
    first_key = next(key for key, values in search.param_grid.items() if len(values) > 1)
    fitted = {params[first_key] for params in search.cv_results_["params"]}
    assert len(fitted) > 1 and search.best_estimator_.named_steps["model"].get_params()[first_key[7:]] in fitted

    mixed = ModelSpec.model_validate({**raw, "features": table("progression", tmp_path)[0].model_dump()["features"]})
    data = TrainingSet(frame, mixed)
    x_train, y_train, _, _ = data.split()
    with pytest.raises(ExportError, match=r"takes numbers only.*\['sex', 'clinic'\]"):
        search_family(data, library, None, x_train, y_train)
