"""Hyperparameter search on a real Dask local cluster (two worker processes): every grid point scored once,
in more than one process, and the same winner as scikit-learn's own GridSearchCV on the same folds."""

from __future__ import annotations

import pytest
from sklearn.model_selection import GridSearchCV, KFold

from flows.tune import TuneParameters, tune_flow
from mlflow_server import MlflowServerConfig
from tasks.features import DEFAULT_GRIDS, build_estimator
from tasks.ingest import assemble_training_set
from tasks.registry import CHAMPION
from tasks.train import TrainingSet
from tests.integration.conftest import model_home


def test_the_grid_is_scored_across_dask_workers_and_agrees_with_grid_search(
    tmp_path_factory: pytest.TempPathFactory, mlflow_config: MlflowServerConfig, prefect_harness: None
) -> None:
    with model_home(tmp_path_factory, mlflow_config.url, "tuned", (([0, 1, 2], CHAMPION),)) as settings:
        outcome = tune_flow(TuneParameters(family="gradient_boosting"))
        spec = settings.spec()
        frame, _ = assemble_training_set(settings.data_for())

    assert len(outcome.scores) == 8 and len({str(s.params) for s in outcome.scores}) == 8  # the 2x2x2 grid
    assert outcome.workers >= 2  # the points ran in more than one worker process
    x_train, y_train, _, _ = TrainingSet(frame, spec).split()
    search = GridSearchCV(
        build_estimator(spec, "gradient_boosting"),
        DEFAULT_GRIDS["gradient_boosting"],
        cv=KFold(spec.training.cv_folds, shuffle=True, random_state=spec.training.seed),
        scoring="neg_root_mean_squared_error",
    ).fit(x_train, y_train)
    assert outcome.best == search.best_params_
    assert outcome.best_cv_score == pytest.approx(search.best_score_)
    assert outcome.param_grid == {key: [value] for key, value in search.best_params_.items()}
