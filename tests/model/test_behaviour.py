"""Behavioural checks on a model trained the way the flow trains it: quality, direction, invariance."""

import pandas as pd
import pytest
from sklearn.model_selection import GridSearchCV, KFold

from mlops.spec import REGRESSION_FAMILIES, load_spec
from tasks.features import DEFAULT_GRIDS, build_estimator
from tasks.metrics import regression_metrics
from tasks.train import TrainingSet
from tests.conftest import SHIPPED_SPECS

SPEC = load_spec("diabetes", SHIPPED_SPECS)
FEATURES = SPEC.feature_names


@pytest.fixture(scope="module", params=list(REGRESSION_FAMILIES))
def trained(request: pytest.FixtureRequest, batches: list[pd.DataFrame]):
    family: str = request.param
    frame = pd.concat(batches, ignore_index=True)
    x_train, y_train, x_holdout, y_holdout = TrainingSet(frame, SPEC).split()
    estimator = build_estimator(SPEC, family)
    search = GridSearchCV(estimator, DEFAULT_GRIDS[family], cv=KFold(5, shuffle=True, random_state=42))
    search.fit(x_train, y_train)
    return family, search.best_estimator_, x_holdout, y_holdout


def test_minimum_quality_on_the_holdout(trained) -> None:
    family, model, x_holdout, y_holdout = trained
    metrics = regression_metrics(y_holdout, model.predict(x_holdout))
    assert metrics["r2"] > 0.3, (family, metrics)
    assert metrics["rmse"] < y_holdout.std(), (family, metrics)


def test_higher_bmi_predicts_more_progression(trained) -> None:
    """Direction: BMI is the strongest known risk factor in this data set."""
    family, model, x_holdout, _ = trained
    lean, heavy = x_holdout.assign(bmi=20.0), x_holdout.assign(bmi=38.0)
    assert (model.predict(heavy) - model.predict(lean)).mean() > 20, family


def test_negligible_noise_does_not_move_predictions(trained) -> None:
    """Invariance: measurement noise far below any unit's resolution changes nothing that matters."""
    family, model, x_holdout, _ = trained
    if family in ("hist_gradient_boosting", "lightgbm"):
        # Measured: histogram trees split exactly at training values, so +1e-9 moves a prediction (by ~5 for
        # HistGradientBoosting, ~8.7 for one row with LightGBM).
        pytest.xfail(f"{family} is not invariant to sub-resolution noise on discrete features")
    noisy = x_holdout + 1e-9
    assert abs(model.predict(noisy) - model.predict(x_holdout)).max() < 1.0, family
