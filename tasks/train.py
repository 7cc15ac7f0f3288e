"""Training: the spec's pipeline per family (or the user's own), a small grid search, one MLflow run.

Before a grid search spends time, the estimator is fitted on a small sample and exported
(:func:`probe_export`): one that cannot become ONNX is refused in seconds with a short error,
the converter's full output kept as a run artifact.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass, field
from functools import cached_property
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import skops.io
from mlflow.data.pandas_dataset import from_pandas
from mlflow.models import infer_signature
from prefect import task
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold, ParameterGrid, StratifiedKFold

from mlops.spec import ModelSpec
from serving.model import open_session
from tasks.boosting import refuse_unexportable
from tasks.dataset import Snapshot
from tasks.estimate import Calibration
from tasks.events import emit, run_logger
from tasks.features import Factory, build_estimator, default_grid, target_values, typed_features
from tasks.lineage import lock_file
from tasks.metrics import (
    RunArtifacts,
    cv_scoring,
    holdout_metrics,
    log_classification_plots,
    log_importance,
    model_outputs,
)
from tasks.onnx_convert import ExportError, first_line, to_onnx
from tasks.reference import log_reference
from tasks.tracking import client

MIN_TRAIN_ROWS = 20
MIN_HOLDOUT_ROWS = 10
PROBE_ROWS = 200


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
        family: Model family, or the factory's ``module:function``.
        best_params: Parameters the search chose.
        metrics: Holdout metrics of the spec's task.
        classes: Class labels in the model's order (classifiers).
    """

    run_id: str
    experiment_id: str
    model_uri: str
    model_id: str
    family: str
    best_params: dict[str, Any]
    metrics: dict[str, float]
    classes: tuple[Any, ...] = field(default_factory=tuple)


def holdout_mask(frame: pd.DataFrame, fraction: float) -> np.ndarray:
    """Hold out rows by a stable hash of their content.

    A row held out once is held out in every later, larger snapshot, so a champion trained
    on an earlier snapshot never saw the rows it is compared on.
    """
    hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return np.asarray((hashes % 10_000) < int(fraction * 10_000))


@dataclass(frozen=True)
class TrainingSet:
    """The data a candidate was trained on, read by its spec (shared by training, export and evaluation)."""

    frame: pd.DataFrame
    spec: ModelSpec

    @cached_property
    def typed(self) -> pd.DataFrame:
        """The spec's features of every row, typed as the model takes them (computed once per training set)."""
        return typed_features(self.frame, self.spec)

    def split(self) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame, pd.Series]:
        """Typed features and target, train/holdout by row hash.

        Raises:
            ValueError: Too few rows on either side, or a classifier with fewer than two classes to learn.
        """
        spec = self.spec
        mask = holdout_mask(self.frame[[*spec.feature_names, spec.target.column]], spec.training.holdout)
        features, target = self.typed, target_values(self.frame, spec)
        train, holdout = ~mask, mask
        if train.sum() < MIN_TRAIN_ROWS or holdout.sum() < MIN_HOLDOUT_ROWS:
            raise ValueError(
                f"not enough data: {int(train.sum())} training and {int(holdout.sum())} holdout rows "
                f"(need {MIN_TRAIN_ROWS} and {MIN_HOLDOUT_ROWS}); land more batches"
            )
        if spec.task.is_classification and target[train].nunique() < 2:
            raise ValueError(f"the training rows hold one class only ({target[train].iloc[0]!r}); land more batches")
        return features[train], target[train], features[holdout], target[holdout]

    @property
    def input_columns(self) -> list[tuple[str, str]]:
        """(column, ``double``/``string``) per feature: the ONNX graph's inputs."""
        return [(f.name, "string" if f.is_categorical else "double") for f in self.spec.features]


def probe_export(estimator: Any, grid: dict[str, list[Any]], data: TrainingSet, x: pd.DataFrame, y: pd.Series) -> None:
    """Fit the estimator (first grid point) on a small sample, export it and open it in onnxruntime.

    Raises:
        ExportError: It cannot be converted or run; known before the search spends time.
    """
    try:
        refuse_unexportable(estimator, data.spec.categorical_features)
    except ValueError as error:
        raise ExportError(str(error)) from error
    sample = x.sample(n=min(PROBE_ROWS, len(x)), random_state=0)
    probe = clone(estimator).set_params(**next(iter(ParameterGrid(grid))))
    probe.fit(sample, y.loc[sample.index])
    converted = to_onnx(probe, data.input_columns)
    try:
        open_session(converted.model.SerializeToString()).run(None, converted.feeds(sample.head(5)))
    except Exception as error:  # onnxruntime raises untyped errors (e.g. NOT_IMPLEMENTED kernels)
        name = type(estimator[-1] if hasattr(estimator, "steps") else estimator).__name__
        raise ExportError(
            f"onnxruntime cannot run the ONNX graph of {name}: {first_line(error)}", traceback.format_exc()
        ) from error


@dataclass(frozen=True)
class Search:
    """One family's (or the factory's) grid search."""

    family: str
    search: GridSearchCV

    @property
    def score(self) -> float:
        return float(self.search.best_score_)


def search_family(
    data: TrainingSet, family: str | None, factory: Factory | None, x: pd.DataFrame, y: pd.Series
) -> Search:
    """Probe the export, then grid-search one family (or the factory's estimator) on the training rows.

    Raises:
        ExportError: The estimator cannot become ONNX (known before the search spends time).
    """
    spec = data.spec
    estimator = build_estimator(spec, family, factory)
    grid = default_grid(spec, family)
    probe_export(estimator, grid, data, x, y)
    folds = (
        StratifiedKFold(spec.training.cv_folds, shuffle=True, random_state=spec.training.seed)
        if spec.task.is_classification
        else KFold(spec.training.cv_folds, shuffle=True, random_state=spec.training.seed)
    )
    search = GridSearchCV(estimator, grid or [{}], cv=folds, scoring=cv_scoring(spec.task), n_jobs=1)
    search.fit(x, y)
    return Search(family or (factory.reference if factory else "?"), search)


def _requirements() -> list[str]:
    """Pinned from what is installed, so MLflow need not infer them in a subprocess."""
    return [f"{name}=={package_version(name)}" for name in ("scikit-learn", "numpy", "pandas", "scipy", "skops")]


def trusted_types(model: Any) -> list[str]:
    """The types our own model's skops file holds beyond skops' defaults (we wrote it, so we trust them)."""
    return sorted(skops.io.get_untrusted_types(data=skops.io.dumps(model)))


def record_export_failure(tracking_uri: str, experiment: str, error: ExportError, lineage: Lineage) -> str:
    """A failed run holding the converter's full output (``export/error.txt``); returns its id."""
    client(tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"export-refused-{lineage.dataset_digest[:8]}", tags=lineage.tags()) as run:
        mlflow.set_tag("onnx_export", "refused")
        mlflow.set_tag("onnx_export_error", str(error)[:500])
        mlflow.log_text(error.detail, "export/error.txt")
    client(tracking_uri).set_terminated(run.info.run_id, "FAILED")
    return run.info.run_id


@task
def train_candidate(
    data: TrainingSet,
    snapshot: Snapshot,
    lineage: Lineage,
    tracking_uri: str,
    validation_reports: dict[str, Any],
    factory: Factory | None = None,
) -> Candidate:
    """Search every family of the spec (or the factory's estimator), keep the best by CV, log one run.

    Raises:
        ExportError: The estimator cannot be exported to ONNX (a failed run keeps the converter's output).
    """
    spec = data.spec
    x_train, y_train, x_holdout, y_holdout = data.split()
    try:
        families: list[str | None] = [*spec.families] or [None]
        searches = [search_family(data, family, factory, x_train, y_train) for family in families]
    except ExportError as error:
        run_id = record_export_failure(tracking_uri, spec.experiment, error, lineage)
        raise ExportError(
            f"{error} (refused before training; full output in run {run_id}, export/error.txt)", error.detail
        ) from error
    best = max(searches, key=lambda item: item.score)
    model = best.search.best_estimator_
    metrics = holdout_metrics(spec.task, model, x_holdout, y_holdout)
    classes = tuple(model.classes_.tolist()) if spec.task.is_classification else ()

    client(tracking_uri)
    mlflow.set_experiment(spec.experiment)
    with mlflow.start_run(
        run_name=f"{best.family.rsplit(':', 1)[-1]}-{snapshot.digest[:8]}", tags=lineage.tags()
    ) as run:
        mlflow.log_params(
            {
                "model": spec.name,
                "task": spec.task.value,
                "family": best.family,
                "families_searched": ",".join(item.family for item in searches),
                "seed": spec.training.seed,
                "holdout_fraction": spec.training.holdout,
                "cv_folds": spec.training.cv_folds,
                "param_grid": json.dumps(best.search.param_grid, sort_keys=True, default=str)[:6000],
                "train_rows": len(x_train),
                "holdout_rows": len(x_holdout),
                **({"classes": json.dumps(classes, default=str)} if classes else {}),
                **{f"best.{key}": value for key, value in best.search.best_params_.items()},
            }
        )
        mlflow.log_metrics(
            {**metrics, **{f"cv_score.{item.family.rsplit(':', 1)[-1]}": item.score for item in searches}}
        )
        mlflow.log_dict(spec.model_dump(mode="json"), "spec.json")
        if factory is not None:
            mlflow.set_tags({"pipeline_factory": factory.reference, "pipeline_factory_sha256": factory.sha256})
            if Path(factory.source_file).is_file():
                mlflow.log_artifact(factory.source_file, "factory")
        dataset = from_pandas(
            data.frame,
            source=snapshot.uri,
            targets=spec.target.column,
            name=f"{spec.experiment}",
            digest=snapshot.digest[:36],
        )
        mlflow.log_input(dataset, context="training")
        mlflow.log_dict(validation_reports, "validation/reports.json")
        log_reference(
            data.frame.assign(**data.typed),
            spec.feature_names,
            model_outputs(spec.task, model, data.typed),
            spec.categorical_features,
            Calibration.fit(list(classes), model.predict_proba(x_holdout), y_holdout) if classes else None,
        )
        if (lock := lock_file()) is not None:
            mlflow.log_artifact(str(lock), "environment")
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(x_holdout, model.predict(x_holdout)),
            input_example=x_holdout.head(5),
            pip_requirements=_requirements(),
            skops_trusted_types=trusted_types(model),
        )
    emit(
        "model.trained",
        "model",
        spec.name,
        {"run_id": run.info.run_id, "family": best.family, "dataset_digest": snapshot.digest, **metrics},
    )
    return Candidate(
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        model_uri=info.model_uri,
        model_id=info.model_id,
        family=best.family,
        best_params=dict(best.search.best_params_),
        metrics=metrics,
        classes=classes,
    )


@task
def log_diagnostics(candidate: Candidate, data: TrainingSet, tracking_uri: str) -> None:
    """Permutation importance and, for a classifier, the confusion matrix and calibration plot, added to the
    candidate's finished run. The flow runs this after the decision (registered or kept) and its training lock:
    none of it gates the candidate, so a new version's release does not wait for it. A failure is logged with
    its traceback and tagged on the run (``diagnostics``) where MLflow still answers, never raised: the version
    is registered by then and its release under way. A re-run of the same training finds it done and does not
    try again."""
    log = run_logger(__name__)
    try:
        _, _, x_holdout, y_holdout = data.split()
        model = mlflow.sklearn.load_model(candidate.model_uri)
        run = RunArtifacts(client(tracking_uri), candidate.run_id)
        log_importance(run, data.spec, model, x_holdout, y_holdout)
        if data.spec.task.is_classification:
            log_classification_plots(run, model, x_holdout, y_holdout)
    except Exception as error:  # diagnostics never undo a decision already announced
        log.warning("run %s: diagnostics not logged: %s", candidate.run_id, first_line(error), exc_info=True)
        try:
            client(tracking_uri).set_tag(candidate.run_id, "diagnostics", f"failed: {first_line(error)}")
        except Exception as unreachable:  # e.g. the tracking server is down: the log line above is what remains
            log.warning("run %s: the diagnostics tag could not be set either: %s", candidate.run_id, unreachable)


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


ABANDONED = (
    "ended by the next training run of this model: its process stopped without closing the run "
    "(the tracking server was unreachable when it failed, or the process was killed)"
)


def end_abandoned_runs(tracking_uri: str, experiment: str) -> list[str]:
    """Mark FAILED the training runs still RUNNING in ``experiment``; call only while holding the model's training
    lock, when no other training run of the model can be running. Returns their ids."""
    tracker = client(tracking_uri)
    found = tracker.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = tracker.search_runs(
        [found.experiment_id], filter_string="attributes.status = 'RUNNING' and tags.training_key LIKE '%'"
    )
    for run in runs:
        tracker.set_tag(run.info.run_id, "ended_by", ABANDONED)
        tracker.set_terminated(run.info.run_id, status="FAILED")
    return [run.info.run_id for run in runs]
