"""Hyperparameter search spread over Dask workers: one Prefect task per grid point.

The training flow searches its grid inside one task (``GridSearchCV``), which is right for one
machine. At team scale the grid is wider than a machine: this flow scores every grid point as its
own task on a ``DaskTaskRunner`` — a local cluster by default (one worker process per core), or the
scheduler at ``MLOPS_DASK_ADDRESS`` (e.g. ``tcp://dask-scheduler:8786``) — with the same folds as
the training flow, and returns the best parameters as a one-point ``param_grid`` for it.

    python -m flows.tune [--family random_forest]
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_table_artifact
from prefect_dask import DaskTaskRunner
from pydantic import BaseModel, Field
from sklearn.model_selection import KFold, ParameterGrid, cross_val_score

from flows.run_once import print_outcome
from mlops.settings import get_settings
from tasks.events import artifact_key
from tasks.features import build_estimator, default_grid
from tasks.ingest import assemble_training_set
from tasks.metrics import cv_scoring
from tasks.train import TrainingSet


class TuneParameters(BaseModel):
    """What to search: the model spec's training section (its first family, seed, folds and grid)."""

    model: str | None = Field(None, description="Model spec name (default: MLOPS_MODEL_NAME).")
    family: str | None = Field(None, description="The family whose grid is searched (default: the spec's first).")


@dataclass(frozen=True)
class Scored:
    params: dict[str, Any]
    cv_score: float  # the task's scorer: higher is better (negative RMSE for regression)
    worker: str


@dataclass(frozen=True)
class TuneOutcome:
    """The best grid point and every score; ``param_grid`` feeds the training flow."""

    family: str
    best: dict[str, Any]
    best_cv_score: float
    param_grid: dict[str, list[Any]]
    scores: list[Scored]
    workers: int


@task
def score_point(data: TrainingSet, family: str, params: dict[str, Any]) -> Scored:
    """Cross-validated score of one grid point, on the training part of the split (as GridSearchCV does)."""
    spec = data.spec
    x_train, y_train, _, _ = data.split()
    model = build_estimator(spec, family).set_params(**params)
    folds = KFold(spec.training.cv_folds, shuffle=True, random_state=spec.training.seed)
    scores = cross_val_score(model, x_train, y_train, cv=folds, scoring=cv_scoring(spec.task), n_jobs=1)
    return Scored(params, float(np.mean(scores)), f"{os.uname().nodename}:{os.getpid()}")


def dask_runner() -> DaskTaskRunner:
    """The scheduler at MLOPS_DASK_ADDRESS, else a local cluster of one single-threaded process per core."""
    address = os.environ.get("MLOPS_DASK_ADDRESS")
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": os.cpu_count() or 1, "threads_per_worker": 1, "processes": True})


@flow(name="tune", log_prints=True, task_runner=dask_runner())  # type: ignore[arg-type]
def tune_flow(params: TuneParameters | None = None) -> TuneOutcome:
    """Score every point of the family's grid as its own task on Dask; return the best."""
    params = params or TuneParameters()
    settings = get_settings()
    spec = settings.spec(params.model)
    family = params.family or spec.families[0]
    frame, snapshot = assemble_training_set(spec.data_uri(settings.data))
    data = TrainingSet(frame, spec)
    points = list(ParameterGrid(default_grid(spec, family)))
    futures = score_point.map(unmapped(data), unmapped(family), points)
    scores = sorted((future.result() for future in futures), key=lambda scored: -scored.cv_score)
    best = scores[0]
    create_table_artifact(
        key=artifact_key("tune", family),
        table=[{**s.params, "cv_score": round(s.cv_score, 4), "worker": s.worker} for s in scores],
        description=f"{len(points)} grid points of {spec.name} on dataset {snapshot.digest[:12]}, best first",
    )
    workers = len({s.worker for s in scores})
    get_run_logger().info(
        "best of %d points (%d workers): %s, cv score %.4f", len(points), workers, best.params, best.cv_score
    )
    return TuneOutcome(
        family,
        best.params,
        best.cv_score,
        {key: [value] for key, value in best.params.items()},
        scores,
        workers,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.tune", description=__doc__)
    parser.add_argument("--model", default=None, help="model spec name (default: MLOPS_MODEL_NAME)")
    parser.add_argument("--family", default=None, help="the family whose grid is searched")
    args = parser.parse_args(argv)
    return print_outcome(lambda: tune_flow(TuneParameters(model=args.model, family=args.family)), "tuning")


if __name__ == "__main__":
    raise SystemExit(main())
