"""Training: a scikit-learn pipeline per model family, a small grid search, one MLflow run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from importlib.metadata import version as package_version
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.data.pandas_dataset import from_pandas
from mlflow.models import infer_signature
from prefect import task
from pydantic import BaseModel, Field
from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
from sklearn.inspection import permutation_importance
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from tasks.dataset import Snapshot
from tasks.events import emit
from tasks.lineage import lock_file
from tasks.reference import log_reference
from tasks.tracking import client

# Tree models are saved with skops; these are the types their files hold beyond skops' defaults.
SKOPS_TRUSTED_TYPES = ["sklearn.tree._tree.Tree", "sklearn._loss.loss.HalfSquaredError"]
MIN_TRAIN_ROWS = 20
MIN_HOLDOUT_ROWS = 10


class ModelFamily(StrEnum):
    """The model families training offers."""

    RIDGE = "ridge"
    RANDOM_FOREST = "random_forest"
    GRADIENT_BOOSTING = "gradient_boosting"


DEFAULT_GRIDS: dict[ModelFamily, dict[str, list[Any]]] = {
    ModelFamily.RIDGE: {"model__alpha": [0.01, 0.1, 1.0, 10.0]},
    ModelFamily.RANDOM_FOREST: {
        "model__n_estimators": [100],
        "model__max_depth": [4, 8],
        "model__min_samples_leaf": [1, 5],
    },
    ModelFamily.GRADIENT_BOOSTING: {
        "model__n_estimators": [100, 200],
        "model__learning_rate": [0.05, 0.1],
        "model__max_depth": [2, 3],
    },
}


class TrainConfig(BaseModel):
    """What to train and how; everything here is logged with the run."""

    family: ModelFamily = Field(ModelFamily.RIDGE, description="Model family.")
    seed: int = Field(42, description="Seed of the search's folds and of randomised models.")
    holdout_fraction: float = Field(
        0.2, gt=0, lt=0.5, description="Share of rows held out, chosen by a hash of each row."
    )
    cv_folds: int = Field(5, ge=2, le=10, description="Folds of the grid search.")
    param_grid: dict[str, list[Any]] | None = Field(
        None, description="Grid over pipeline parameters (e.g. {'model__alpha': [1, 10]}); default per family."
    )

    def grid(self) -> dict[str, list[Any]]:
        return self.param_grid if self.param_grid is not None else DEFAULT_GRIDS[self.family]


@dataclass(frozen=True)
class Lineage:
    """Where a candidate came from; every field becomes a tag of its run and model version."""

    dataset_digest: str
    dataset_uri: str
    git_commit: str
    flow_run_id: str
    validation: str
    training_key: str

    def tags(self) -> dict[str, str]:
        return {
            "dataset_digest": self.dataset_digest,
            "dataset_uri": self.dataset_uri,
            "git_commit": self.git_commit,
            "prefect_flow_run_id": self.flow_run_id,
            "validation_status": "passed",
            "validation_summary": self.validation,
            "training_key": self.training_key,
        }


@dataclass(frozen=True)
class Candidate:
    """A trained model logged to MLflow, with its holdout metrics.

    Attributes:
        run_id: The MLflow run that holds it.
        experiment_id: The run's experiment.
        model_uri: URI the model loads from.
        model_id: MLflow's id of the logged model.
        family: Model family.
        best_params: Parameters the search chose.
        metrics: Holdout RMSE, MAE and R².
    """

    run_id: str
    experiment_id: str
    model_uri: str
    model_id: str
    family: str
    best_params: dict[str, Any]
    metrics: dict[str, float]


def build_pipeline(family: ModelFamily, seed: int) -> Pipeline:
    """The untrained pipeline of a family (trees need no scaling)."""
    if family is ModelFamily.RIDGE:
        return Pipeline([("scale", StandardScaler()), ("model", Ridge())])
    if family is ModelFamily.RANDOM_FOREST:
        return Pipeline([("model", RandomForestRegressor(random_state=seed, n_jobs=1))])
    return Pipeline([("model", GradientBoostingRegressor(random_state=seed))])


def holdout_mask(frame: pd.DataFrame, fraction: float) -> np.ndarray:
    """Hold out rows by a stable hash of their content.

    A row held out once is held out in every later, larger snapshot, so a champion trained
    on an earlier snapshot never saw the rows it is compared on.
    """
    hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return np.asarray((hashes % 10_000) < int(fraction * 10_000))


def split(
    frame: pd.DataFrame, features: list[str], target: str, fraction: float
) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame, pd.Series]:
    """Train/holdout split by row hash.

    Raises:
        ValueError: Too few rows on either side to train or to judge a model.
    """
    mask = holdout_mask(frame[[*features, target]], fraction)
    train, holdout = frame[~mask], frame[mask]
    if len(train) < MIN_TRAIN_ROWS or len(holdout) < MIN_HOLDOUT_ROWS:
        raise ValueError(
            f"not enough data: {len(train)} training and {len(holdout)} holdout rows "
            f"(need {MIN_TRAIN_ROWS} and {MIN_HOLDOUT_ROWS}); land more batches"
        )
    return train[features], train[target], holdout[features], holdout[target]


@dataclass(frozen=True)
class TrainingSet:
    """The data a candidate was trained on, and how its holdout is chosen (shared by export and evaluation)."""

    frame: pd.DataFrame
    features: list[str]
    target: str
    holdout_fraction: float

    def split(self) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame, pd.Series]:
        return split(self.frame, self.features, self.target, self.holdout_fraction)


def regression_metrics(y_true: pd.Series, y_pred: np.ndarray) -> dict[str, float]:
    return {
        "rmse": float(np.sqrt(mean_squared_error(y_true, y_pred))),
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "r2": float(r2_score(y_true, y_pred)),
    }


def _importance_figure(names: list[str], means: np.ndarray, stds: np.ndarray) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    order = np.argsort(means)
    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.barh([names[i] for i in order], means[order], xerr=stds[order], color="#4c72b0")
    axes.set_xlabel("increase in holdout RMSE when the feature is shuffled")
    axes.set_title("Permutation importance")
    figure.tight_layout()
    return figure


def _requirements() -> list[str]:
    """Pinned from what is installed, so MLflow need not infer them in a subprocess."""
    return [f"{name}=={package_version(name)}" for name in ("scikit-learn", "numpy", "pandas", "scipy", "skops")]


@task
def train_candidate(
    frame: pd.DataFrame,
    snapshot: Snapshot,
    features: list[str],
    target: str,
    config: TrainConfig,
    lineage: Lineage,
    tracking_uri: str,
    experiment: str,
    model_name: str,
    validation_reports: dict[str, Any],
) -> Candidate:
    """Search, fit and log one candidate: params, holdout metrics, model, lineage, plots."""
    x_train, y_train, x_holdout, y_holdout = split(frame, features, target, config.holdout_fraction)
    search = GridSearchCV(
        build_pipeline(config.family, config.seed),
        config.grid(),
        cv=KFold(config.cv_folds, shuffle=True, random_state=config.seed),
        scoring="neg_root_mean_squared_error",
        n_jobs=1,
    )
    search.fit(x_train, y_train)
    model = search.best_estimator_
    metrics = regression_metrics(y_holdout, model.predict(x_holdout))
    importance = permutation_importance(
        model, x_holdout, y_holdout, n_repeats=10, random_state=config.seed, scoring="neg_root_mean_squared_error"
    )

    client(tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"{config.family.value}-{snapshot.digest[:8]}", tags=lineage.tags()) as run:
        mlflow.log_params(
            {
                "family": config.family.value,
                "seed": config.seed,
                "holdout_fraction": config.holdout_fraction,
                "cv_folds": config.cv_folds,
                "param_grid": json.dumps(config.grid(), sort_keys=True),
                "train_rows": len(x_train),
                "holdout_rows": len(x_holdout),
                **{f"best.{key}": value for key, value in search.best_params_.items()},
            }
        )
        mlflow.log_metrics({**metrics, "cv_rmse": float(-search.best_score_)})
        dataset = from_pandas(
            frame, source=snapshot.uri, targets=target, name=f"{experiment}-training", digest=snapshot.digest[:36]
        )
        mlflow.log_input(dataset, context="training")
        mlflow.log_figure(
            _importance_figure(features, importance.importances_mean, importance.importances_std),
            "feature_importance.png",
        )
        mlflow.log_dict(
            {name: float(value) for name, value in zip(features, importance.importances_mean, strict=True)},
            "feature_importance.json",
        )
        mlflow.log_dict(validation_reports, "validation/reports.json")
        log_reference(frame, features, model.predict(frame[features]))
        if (lock := lock_file()) is not None:
            mlflow.log_artifact(str(lock), "environment")
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(x_holdout, model.predict(x_holdout)),
            input_example=x_holdout.head(5),
            pip_requirements=_requirements(),
            skops_trusted_types=SKOPS_TRUSTED_TYPES,
        )
    emit(
        "model.trained",
        "model",
        model_name,
        {"run_id": run.info.run_id, "family": config.family.value, "dataset_digest": snapshot.digest, **metrics},
    )
    return Candidate(
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        model_uri=info.model_uri,
        model_id=info.model_id,
        family=config.family.value,
        best_params=dict(search.best_params_),
        metrics=metrics,
    )


def record_outcome(tracking_uri: str, run_id: str, outcome: str, message: str) -> None:
    """Tag the run with what came of it (``registered:<version>`` or ``kept``); re-runs look for it."""
    tracker = client(tracking_uri)
    tracker.set_tag(run_id, "outcome", outcome)
    tracker.set_tag(run_id, "outcome_message", message)


@task(retries=2, retry_delay_seconds=2)
def find_previous_training(tracking_uri: str, experiment: str, key: str) -> dict[str, str] | None:
    """The tags of a finished run with the same training key and a recorded outcome, if one exists."""
    found = client(tracking_uri).get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client(tracking_uri).search_runs(
        [found.experiment_id],
        filter_string=f"tags.training_key = '{key}' and attributes.status = 'FINISHED'",
        max_results=10,
    )
    for run in runs:
        if "outcome" in run.data.tags:
            return {**run.data.tags, "run_id": run.info.run_id, "experiment_id": run.info.experiment_id}
    return None
