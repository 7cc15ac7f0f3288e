"""Pipeline factories as a team writes them (named by specs in the tests as ``tests.integration.factories:<name>``)."""

from __future__ import annotations

from typing import Any

from sklearn.compose import ColumnTransformer
from sklearn.ensemble import ExtraTreesClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder
from sklearn.svm import SVR


def extra_trees(numeric: list[str], categorical: list[str]) -> Any:
    """A whole pipeline of their own: median-imputed numbers, one-hot categories, extra trees."""
    prep = ColumnTransformer(
        [
            ("numbers", SimpleImputer(strategy="median"), numeric),
            ("categories", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical),
        ]
    )
    return Pipeline([("prep", prep), ("trees", ExtraTreesClassifier(n_estimators=50, random_state=0))])


def many_trees(numeric: list[str], categorical: list[str]) -> Any:
    """A forest big enough that its training run stays open for seconds (importance, logging the model)."""
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor(n_estimators=150, random_state=0, n_jobs=1)


def support_vectors(numeric: list[str], categorical: list[str]) -> Any:
    """An estimator skl2onnx converts but onnxruntime cannot run (no SVMRegressor kernel)."""
    return SVR()


CANCER_FEATURES = [
    "mean texture",
    "mean smoothness",
    "mean compactness",
    "mean concavity",
    "mean symmetry",
    "worst texture",
    "worst smoothness",
    "worst symmetry",
]
# A second regression model with other columns (names with spaces), beside diabetes on one stack.
SECOND_REGRESSION = {
    "target": {"column": "mean area"},
    "features": [{"name": name, "kind": "numeric"} for name in CANCER_FEATURES],
    "data": {"example": "tests.integration.factories:cancer_regression_frame"},
}


def cancer_regression_frame() -> Any:
    """The second regression table: tumour area from texture and shape measurements (569 rows; enough that
    training-like traffic is not judged drifted by chance, as a bootstrap of wine's 178 rows was)."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame[[*CANCER_FEATURES, "mean area"]]
    return frame.sample(frac=1, random_state=0).reset_index(drop=True)


def _boosted(library: str, classifier: bool, pipeline: bool) -> Any:
    """A factory returning the library's model bare, or behind a ColumnTransformer of the team's own (imputed
    numbers, ordinal-encoded categories): the shapes teams bring."""

    def make(numeric: list[str], categorical: list[str]) -> Any:
        from tasks.boosting import boosting_estimator

        model = boosting_estimator(library, classifier, seed=0).set_params(
            **({"iterations": 60} if library == "catboost" else {"n_estimators": 60})
        )
        if not pipeline:
            return model
        from sklearn.preprocessing import OrdinalEncoder

        encoder = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, dtype=float)
        prep = ColumnTransformer(
            [("numbers", SimpleImputer(strategy="median"), numeric), ("codes", encoder, categorical)]
        )
        return Pipeline([("prep", prep), ("model", model)])

    make.__name__ = make.__qualname__ = (
        f"{library}_{'classifier' if classifier else 'regressor'}_{'pipeline' if pipeline else 'bare'}"
    )
    return make


xgboost_classifier_bare = _boosted("xgboost", True, False)
xgboost_classifier_pipeline = _boosted("xgboost", True, True)
xgboost_regressor_bare = _boosted("xgboost", False, False)
xgboost_regressor_pipeline = _boosted("xgboost", False, True)
lightgbm_classifier_bare = _boosted("lightgbm", True, False)
lightgbm_classifier_pipeline = _boosted("lightgbm", True, True)
lightgbm_regressor_bare = _boosted("lightgbm", False, False)
lightgbm_regressor_pipeline = _boosted("lightgbm", False, True)
catboost_classifier_bare = _boosted("catboost", True, False)
catboost_classifier_pipeline = _boosted("catboost", True, True)
catboost_regressor_bare = _boosted("catboost", False, False)
catboost_regressor_pipeline = _boosted("catboost", False, True)
