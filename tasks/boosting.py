"""XGBoost, LightGBM and CatBoost as built-in families and inside your own pipelines.

The libraries are the optional ``boosting`` extra (``uv sync --extra boosting``; ``make`` installs
it): a family of a library that is not installed is refused with the command that installs it.

- :func:`boosting_estimator` is a family's unfitted estimator (quiet, seeded, writing no files).
- :class:`EncodedLabels` fits a classifier on the labels ``0..k-1`` and answers with the class
  labels (strings, integers, booleans): XGBoost refuses anything else, and the ONNX converters of
  all three see the codes only (the export maps them back in the graph). It forwards every
  parameter to the estimator it wraps, so grids name the estimator's own parameters.
- :func:`refuse_unexportable` says before training, in one line, what the ONNX export could not
  reproduce: native categorical splits, or strings reaching a model that takes numbers only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.validation import check_is_fitted

from mlops.spec import BOOSTING_FAMILIES
from tasks.boosting_onnx import installed

INSTALL = "uv sync --extra boosting (or pip install 'mlops-loop[boosting]')"
BOOSTING_GRIDS: dict[str, dict[str, list[Any]]] = {
    "xgboost": {"model__n_estimators": [100, 300], "model__max_depth": [3, 6], "model__learning_rate": [0.1]},
    "lightgbm": {"model__n_estimators": [100, 300], "model__num_leaves": [15, 31], "model__learning_rate": [0.05]},
    "catboost": {"model__iterations": [300], "model__depth": [4, 6], "model__learning_rate": [0.1]},
}


class MissingLibraryError(ValueError):
    """A family or a factory needs a gradient-boosting library that is not installed."""


def library_of(estimator: Any) -> str | None:
    """``xgboost``, ``lightgbm`` or ``catboost`` for an estimator of one of them, else None."""
    root = type(estimator).__module__.split(".", 1)[0]
    return root if root in BOOSTING_FAMILIES else None


def boosting_estimator(family: str, classification: bool, seed: int) -> Any:
    """A gradient-boosting family's unfitted estimator. XGBoost and LightGBM fit on one thread: the grid search
    fits one model at a time, and on small tables their threads cost more than they give (``bench/training.py
    --model-threads``); a grid may set ``model__n_jobs`` for large ones.

    Raises:
        MissingLibraryError: The library is not installed (the message says how to install it).
    """
    if not installed(family):
        raise MissingLibraryError(f"family {family!r} needs {family} and onnxmltools: install them with {INSTALL}")
    if family == "xgboost":
        from xgboost import XGBClassifier, XGBRegressor

        return (XGBClassifier if classification else XGBRegressor)(random_state=seed, tree_method="hist", n_jobs=1)
    if family == "lightgbm":
        from lightgbm import LGBMClassifier, LGBMRegressor

        return (LGBMClassifier if classification else LGBMRegressor)(random_state=seed, verbose=-1, n_jobs=1)
    from catboost import CatBoostClassifier, CatBoostRegressor

    return (CatBoostClassifier if classification else CatBoostRegressor)(
        random_seed=seed, verbose=0, allow_writing_files=False
    )


class EncodedLabels(ClassifierMixin, BaseEstimator):
    """A classifier fitted on label codes ``0..k-1`` that predicts the original labels.

    Attributes:
        estimator: The unfitted classifier.
        estimator_: The fitted copy (fitted on the codes).
        classes_: The class labels in code order (sorted, as scikit-learn orders them).
    """

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        params = super().get_params(deep=False)
        if deep:
            params.update(self.estimator.get_params(deep=True))
        return params

    def set_params(self, **params: Any) -> EncodedLabels:
        if "estimator" in params:
            self.estimator = params.pop("estimator")
        if params:
            self.estimator.set_params(**params)
        return self

    def fit(self, x: Any, y: Any, **fit_params: Any) -> EncodedLabels:
        encoder = LabelEncoder().fit(np.asarray(y))
        self.classes_ = encoder.classes_
        self.estimator_ = clone(self.estimator).fit(x, encoder.transform(np.asarray(y)), **fit_params)
        self.n_features_in_ = getattr(self.estimator_, "n_features_in_", None)
        return self

    def predict(self, x: Any) -> np.ndarray:
        check_is_fitted(self, "estimator_")
        codes = np.asarray(self.estimator_.predict(x)).ravel().astype(np.int64)
        return np.asarray(self.classes_[codes])

    def predict_proba(self, x: Any) -> np.ndarray:
        check_is_fitted(self, "estimator_")
        return np.asarray(self.estimator_.predict_proba(x), dtype=np.float64)


def final_estimator(model: Any) -> Any:
    """The estimator at the end of a (nested) pipeline, or the model itself."""
    while isinstance(model, Pipeline):
        model = model.steps[-1][1]
    return model


def encode_labels(model: Any) -> Any:
    """``model`` with its final estimator wrapped in :class:`EncodedLabels` where it is a gradient-boosting
    classifier (the pipeline is changed in place; a bare estimator comes back wrapped)."""
    if not isinstance(model, Pipeline):
        return EncodedLabels(model) if library_of(model) is not None else model
    name, last = model.steps[-1]
    model.steps[-1] = (name, encode_labels(last))
    return model


def takes_typed_columns(model: Any) -> bool:
    """Whether a factory's estimator selects the typed columns itself (a ``ColumnTransformer`` first)."""
    while isinstance(model, Pipeline):
        model = model.steps[0][1]
    return isinstance(model, ColumnTransformer)


def _native_categorical(estimator: Any) -> str | None:
    params = estimator.get_params(deep=False)
    if library_of(estimator) == "xgboost" and params.get("enable_categorical"):
        return "enable_categorical=True"
    if library_of(estimator) == "lightgbm" and params.get("categorical_feature") not in (None, "auto"):
        return "categorical_feature"
    if library_of(estimator) == "catboost" and params.get("cat_features"):
        return "cat_features"
    if type(estimator).__name__.startswith("HistGradientBoosting") and params.get("categorical_features") not in (
        None,
        "from_dtype",
    ):
        return "categorical_features"
    return None


def _bare(model: Any) -> bool:
    """Nothing in front of the model: it takes the typed columns as they are."""
    while isinstance(model, Pipeline) and len(model.steps) == 1:
        model = model.steps[0][1]
    return not isinstance(model, Pipeline)


def refuse_unexportable(model: Any, categorical: list[str]) -> None:
    """Refuse, before any fitting, what the ONNX export cannot reproduce.

    Args:
        model: The unfitted estimator or pipeline as it will be trained.
        categorical: The spec's categorical columns (strings) when they reach ``model`` as they are.

    Raises:
        ValueError: A native categorical option (its splits become set-membership nodes onnxruntime has
            mispredicted), or string columns fed to a model that takes numbers only.
    """
    estimator = final_estimator(model)
    if isinstance(estimator, EncodedLabels):
        estimator = estimator.estimator
    option = _native_categorical(estimator)
    name = type(estimator).__name__
    if option is not None:
        raise ValueError(
            f"{name} with {option}: native categorical splits are not exported with parity to ONNX; "
            "drop the option and let the spec's one-hot encoding (training.preprocess: true) or an encoder "
            "in your pipeline turn categories into numbers"
        )
    if categorical and _bare(model):
        raise ValueError(
            f"{name} takes numbers only, and the categorical columns {categorical} would reach it as strings: "
            "set training.preprocess: true (the spec's one-hot encoding in front) or return a pipeline that "
            "encodes them"
        )
