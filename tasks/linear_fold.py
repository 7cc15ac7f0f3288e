"""Standard scaling folded into the linear model after it, so the exported graph does not scale at all.

A linear model scores ``(x - mean) / scale @ coef + intercept``, which equals
``x @ (coef / scale) + (intercept - (mean / scale) @ coef)``. onnxruntime runs every scaled column
as its own ``Sub`` and ``Div`` over the whole batch (about a third of a logistic regression's graph
on a mixed table); with the scaling folded into the coefficients those nodes are gone and the answers
are the same up to rounding (the export still checks them against scikit-learn's).

Folded: a ``StandardScaler`` right before a linear model (``coef_``/``intercept_``), alone or as the
last step of a ``ColumnTransformer`` branch right before it. Anything else is left as it is. The
model passed in is never changed: the fold works on a copy.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import (
    ElasticNet,
    Lasso,
    LinearRegression,
    LogisticRegression,
    Ridge,
    RidgeClassifier,
    SGDClassifier,
    SGDRegressor,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

LINEAR = (ElasticNet, Lasso, LinearRegression, LogisticRegression, Ridge, RidgeClassifier, SGDClassifier, SGDRegressor)


def is_linear(estimator: Any) -> bool:
    """A fitted linear model whose answer is a function of ``x @ coef_.T + intercept_`` alone."""
    return isinstance(estimator, LINEAR) and hasattr(estimator, "coef_")


def _scaling(scaler: StandardScaler) -> tuple[np.ndarray, np.ndarray]:
    width = int(scaler.n_features_in_)
    mean = np.asarray(scaler.mean_, dtype=np.float64) if scaler.with_mean else np.zeros(width)
    scale = np.asarray(scaler.scale_, dtype=np.float64) if scaler.with_std else np.ones(width)
    return mean, scale


def _identity(scaler: StandardScaler) -> FunctionTransformer:
    """What a fitted ColumnTransformer holds for a ``"passthrough"`` branch, in the scaler's place."""
    identity = FunctionTransformer(accept_sparse=True, check_inverse=False, feature_names_out="one-to-one")
    for fitted in ("n_features_in_", "feature_names_in_"):
        if hasattr(scaler, fitted):
            setattr(identity, fitted, getattr(scaler, fitted))
    return identity


def _without_scaler(transformer: Any) -> Any | None:
    """The branch with its final scaler removed (an identity when that was all), or None when it does not end in
    one."""
    if isinstance(transformer, StandardScaler):
        return _identity(transformer)
    if isinstance(transformer, Pipeline) and isinstance(transformer.steps[-1][1], StandardScaler):
        steps = transformer.steps[:-1]
        return Pipeline(steps) if steps else _identity(transformer.steps[-1][1])
    return None


def _branch_scaler(transformer: Any) -> StandardScaler:
    return transformer if isinstance(transformer, StandardScaler) else transformer.steps[-1][1]


def fold_scalers(steps: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """A flat pipeline's steps with the standard scaling in front of its linear model folded into the coefficients
    (copies of the steps it changes), or ``steps`` itself when there is nothing to fold."""
    if len(steps) < 2 or not is_linear(steps[-1][1]):
        return steps
    (name, before), (model_name, model) = steps[-2], steps[-1]
    if isinstance(before, StandardScaler):
        folded = copy.deepcopy(model)
        _fold(folded, [(slice(0, before.n_features_in_), _scaling(before))])
        return [*steps[:-2], (model_name, folded)]
    if not isinstance(before, ColumnTransformer) or not hasattr(before, "output_indices_"):
        return steps
    transformer = copy.deepcopy(before)
    scalings: list[tuple[slice, tuple[np.ndarray, np.ndarray]]] = []
    for index, (branch_name, branch, columns) in enumerate(transformer.transformers_):
        remaining = _without_scaler(branch)
        if remaining is not None:
            scalings.append((transformer.output_indices_[branch_name], _scaling(_branch_scaler(branch))))
            transformer.transformers_[index] = (branch_name, remaining, columns)
    if not scalings:
        return steps
    folded = copy.deepcopy(model)
    _fold(folded, scalings)
    return [*steps[:-2], (name, transformer), (model_name, folded)]


def _fold(estimator: Any, scalings: list[tuple[slice, tuple[np.ndarray, np.ndarray]]]) -> None:
    """Fold each scaling (of the model's input columns ``slice``) into ``estimator``'s coefficients, in place."""
    coef = np.array(estimator.coef_, dtype=np.float64)
    weights = np.atleast_2d(coef)  # a view: (outputs, features)
    intercept = np.array(estimator.intercept_, dtype=np.float64).reshape(-1) * np.ones(weights.shape[0])
    for columns, (mean, scale) in scalings:
        weights[:, columns] = weights[:, columns] / scale
        intercept = intercept - weights[:, columns] @ mean
    estimator.coef_ = coef
    original = estimator.intercept_
    estimator.intercept_ = intercept if isinstance(original, np.ndarray) else np.float64(intercept[0])
