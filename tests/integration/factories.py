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


def support_vectors(numeric: list[str], categorical: list[str]) -> Any:
    """An estimator skl2onnx converts but onnxruntime cannot run (no SVMRegressor kernel)."""
    return SVR()


def wine_regression_frame() -> Any:
    """A second regression table with other columns: wine colour intensity from its chemistry."""
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame.drop(columns=["target"])
    return frame.sample(frac=1, random_state=0).reset_index(drop=True)
