"""Behavioural checks on a model trained the way the flow trains it: quality, direction, invariance."""

import pandas as pd
import pytest
from sklearn.model_selection import GridSearchCV, KFold

from mlops.settings import Settings
from tasks.train import DEFAULT_GRIDS, ModelFamily, build_pipeline, regression_metrics, split

FEATURES = list(Settings().feature_columns)


@pytest.fixture(scope="module", params=list(ModelFamily))
def trained(request: pytest.FixtureRequest, batches: list[pd.DataFrame]):
    family: ModelFamily = request.param
    frame = pd.concat(batches, ignore_index=True)
    x_train, y_train, x_holdout, y_holdout = split(frame, FEATURES, "target", 0.2)
    search = GridSearchCV(build_pipeline(family, 42), DEFAULT_GRIDS[family], cv=KFold(5, shuffle=True, random_state=42))
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
    noisy = x_holdout + 1e-9
    assert abs(model.predict(noisy) - model.predict(x_holdout)).max() < 1.0, family
