"""Standard scaling folded into linear models at export: the same answers, no scaling nodes, the model untouched.

Tables: tumours (mixed types with gaps, binary), wine with a string column and gaps (multiclass),
diabetes (numbers, regression) through users' own pipeline shapes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from mlops.spec import load_spec
from serving.model import open_session
from tasks.linear_fold import fold_scalers
from tasks.onnx_convert import to_onnx
from tasks.sample_data import diabetes_frame, tumours_frame
from tests.unit.test_export import fitted, wine_frame

SPECS = Path(__file__).resolve().parents[2] / "models"


def flat(model: Pipeline) -> list[tuple[str, object]]:
    return list(model.steps)


@pytest.fixture(scope="module")
def wine() -> tuple[Pipeline, pd.DataFrame]:
    """A multiclass logistic regression on wine with a string column and gaps: scaled numbers (some imputed first),
    one-hot region."""
    frame = wine_frame()
    numbers = [c for c in frame.columns[:6] if c != "alcohol"]
    prep = ColumnTransformer(
        [
            ("numbers", StandardScaler(), numbers),
            (
                "gaps",
                Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]),
                ["alcohol"],
            ),
            ("region", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["region"]),
        ]
    )
    x = frame.drop(columns=["cultivar"])
    return Pipeline([("prep", prep), ("model", LogisticRegression(max_iter=2000))]).fit(x, frame["cultivar"]), x


def test_a_folded_classifier_answers_as_the_model_and_leaves_it_unchanged(wine: tuple[Pipeline, pd.DataFrame]) -> None:
    model, x = wine
    coef, intercept = model[-1].coef_.copy(), model[-1].intercept_.copy()
    folded = fold_scalers(flat(model))
    assert folded is not flat(model)
    branches = {name: branch for name, branch, _ in folded[0][1].transformers_}
    assert isinstance(branches["numbers"], FunctionTransformer) and [name for name, _ in branches["gaps"].steps] == [
        "impute"
    ]
    np.testing.assert_allclose(Pipeline(folded).predict_proba(x), model.predict_proba(x), rtol=0, atol=1e-12)
    assert np.array_equal(model[-1].coef_, coef) and np.array_equal(model[-1].intercept_, intercept)
    assert isinstance(model[0].transformers_[0][1], StandardScaler)  # the model keeps its scaler


def test_the_exported_graph_has_no_scaling_nodes_and_matches_scikit_learn(wine: tuple[Pipeline, pd.DataFrame]) -> None:
    model, x = wine
    converted = to_onnx(model, [(c, "string" if c == "region" else "double") for c in x.columns])
    assert not [node.op_type for node in converted.model.graph.node if node.op_type in ("Sub", "Scaler")]
    session = open_session(converted.model.SerializeToString())
    labels, probabilities = session.run(None, converted.feeds(x))
    np.testing.assert_allclose(probabilities, model.predict_proba(x), rtol=0, atol=1e-9)
    assert list(labels.reshape(-1)) == list(model.predict(x))


def test_the_spec_built_tumours_classifier_folds_every_scaled_branch() -> None:
    model, _, x_holdout, _ = fitted(load_spec("tumours", SPECS), tumours_frame(), "logistic_regression")
    folded = fold_scalers(flat(model))
    kept = [type(branch).__name__ for _, branch, _ in folded[0][1].transformers_]
    assert "StandardScaler" not in kept and "FunctionTransformer" in kept
    np.testing.assert_allclose(
        Pipeline(folded).predict_proba(x_holdout), model.predict_proba(x_holdout), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize(
    "scaler",
    [StandardScaler(), StandardScaler(with_mean=False), StandardScaler(with_std=False)],
    ids=["mean-and-std", "std-only", "mean-only"],
)
def test_a_scaler_right_before_a_regression_is_folded_away(scaler: StandardScaler) -> None:
    frame = diabetes_frame()
    x, y = frame.drop(columns=["target"]), frame["target"]
    model = Pipeline([("impute", SimpleImputer()), ("scale", scaler), ("ridge", Ridge(alpha=0.5))]).fit(x, y)
    folded = fold_scalers(flat(model))
    assert [name for name, _ in folded] == ["impute", "ridge"]
    np.testing.assert_allclose(Pipeline(folded).predict(x), model.predict(x), rtol=1e-12, atol=1e-9)
    assert isinstance(model[-1].intercept_, float) == isinstance(folded[-1][1].intercept_, float)


def test_what_cannot_be_folded_is_left_as_it_is() -> None:
    frame = diabetes_frame()
    x, y = frame.drop(columns=["target"]), frame["target"]
    trees = Pipeline([("scale", StandardScaler()), ("forest", RandomForestRegressor(n_estimators=3))]).fit(x, y)
    scaled_then_imputed = Pipeline(
        [
            ("prep", ColumnTransformer([("n", Pipeline([("s", StandardScaler()), ("i", SimpleImputer())]), ["bmi"])])),
            ("ridge", Ridge()),
        ]
    ).fit(x, y)
    for model in (trees, scaled_then_imputed, Pipeline([("ridge", Ridge())]).fit(x, y)):
        steps = flat(model)
        assert fold_scalers(steps) is steps
