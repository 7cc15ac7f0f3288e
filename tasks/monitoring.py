"""Monitoring tasks: judge a window of served requests against the champion's training reference.

- drift: the fast decision of :mod:`tasks.drift` on every row of the window (features and the
  model's outputs: a regression's prediction; a classifier's label and each class probability), and
  an Evidently 0.7 ``DataDriftPreset`` report on samples of both sides for people to read (HTML,
  kept in MLflow and linked from Prefect), with the same column kinds;
- quality: the Great Expectations suite of :mod:`tasks.validate` on the live inputs;
- performance: of the rows that have a delayed label — RMSE against the champion's holdout RMSE, or a
  classifier's accuracy, macro F1, ROC AUC and log loss against its holdout figures;
- estimated performance (classifiers, no labels needed): :mod:`tasks.estimate` on the window's probabilities.

``drift.detected``, ``performance.degraded`` and ``performance.estimated_drop`` are emitted here, by the
tasks that decide them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from prefect import task

from mlops.policies import MonitorPolicy
from mlops.spec import CLASSIFICATION_METRICS
from tasks.collected import join_labels, load_labels, rmse
from tasks.drift import SMALL_REFERENCE, DriftDecision, decide
from tasks.estimate import Estimate, estimate
from tasks.events import emit, run_logger
from tasks.features import category_strings
from tasks.metrics import classification_metrics
from tasks.reference import PREDICTION, Reference, probability_columns
from tasks.tracking import client

REPORT_DIR = "drift"


@dataclass(frozen=True)
class DriftVerdict:
    """The drift decision of one window."""

    decision: DriftDecision
    features: tuple[str, ...]
    drifted: bool

    @property
    def drifted_features(self) -> list[str]:
        return [column for column in self.decision.drifted if column in self.features]

    @property
    def drifted_outputs(self) -> list[str]:
        """The model's outputs that drifted: prediction (a classifier's label) and class probabilities."""
        return [column for column in self.decision.drifted if column not in self.features]

    @property
    def feature_share(self) -> float:
        return len(self.drifted_features) / len(self.features) if self.features else 0.0

    @property
    def material_outputs(self) -> list[str]:
        """Drifted outputs whose distance also reaches the threshold: what counts as prediction drift."""
        return [column for column in self.drifted_outputs if self.decision.material(column)]

    @property
    def prediction_drifted(self) -> bool:
        return bool(self.material_outputs)

    def payload(self) -> dict[str, Any]:
        return {
            "drifted_columns": self.drifted_features,
            "drift_share": round(self.feature_share, 4),
            "prediction_drifted": self.prediction_drifted,
            "drifted_outputs": self.drifted_outputs,
            "scores": {column: round(score, 6) for column, score in self.decision.scores.items()},
            "effects": {column: round(effect, 4) for column, effect in self.decision.effects.items()},
            "methods": self.decision.methods,
            "threshold": self.decision.threshold,
            "p_value": self.decision.p_value,
            "rows": self.decision.rows,
            "sampled_rows": self.decision.sampled,
        }


@dataclass(frozen=True)
class Performance:
    """A window's metrics over its labelled rows, against the champion's holdout figures.

    Attributes:
        metrics: RMSE for a regression; accuracy, f1_macro, roc_auc, log_loss for a classifier.
        baseline: The same metrics on the champion's holdout.
        worse: The metrics that fell beyond the policy's allowance (degraded when any did).
    """

    labelled: int
    metrics: dict[str, float]
    baseline: dict[str, float]
    degraded: bool
    judged: bool = field(default=False)
    worse: tuple[str, ...] = ()

    @property
    def rmse(self) -> float | None:
        return self.metrics.get("rmse")

    def payload(self) -> dict[str, Any]:
        return {
            "labelled_rows": self.labelled,
            **{key: _rounded(value) for key, value in self.metrics.items()},
            **{f"baseline_{key}": _rounded(value) for key, value in self.baseline.items()},
            **({"worse": list(self.worse)} if self.worse else {}),
        }

    def summary(self) -> str:
        return ", ".join(
            f"{key} {value:.3f} (holdout {self.baseline[key]:.3f})"
            for key, value in self.metrics.items()
            if key in self.baseline and not np.isnan(value)
        )


def _rounded(value: float) -> float | None:
    return None if value is None or np.isnan(value) else round(float(value), 6)


@task
def judge_drift(
    reference: Reference,
    window: pd.DataFrame,
    features: list[str],
    policy: MonitorPolicy,
    model_name: str,
    version: str,
    context: dict[str, Any],
) -> DriftVerdict:
    """Decide drift on every row of the window; emits ``drift.detected`` when it drifted."""
    decision = decide(
        reference.profile,
        window,
        threshold=policy.column_threshold,
        max_rows=policy.max_rows,
        p_value=policy.column_p_value,
        test_rows=policy.report_rows,
    )
    verdict = DriftVerdict(decision, tuple(features), drifted=False)
    drifted = verdict.feature_share >= policy.drift_share or (policy.prediction_drift and verdict.prediction_drifted)
    verdict = DriftVerdict(decision, tuple(features), drifted)
    run_logger(__name__).info(
        "drift: %d of %d features drifted (%s), outputs %s -> %s",
        len(verdict.drifted_features),
        len(features),
        ", ".join(verdict.drifted_features) or "none",
        ", ".join(verdict.drifted_outputs) or "stable",
        "DRIFT" if drifted else "no drift",
    )
    if drifted:
        emit("drift.detected", "model", model_name, {"version": version, **verdict.payload(), **context})
    return verdict


@task
def drift_report(
    reference: pd.DataFrame,
    window: pd.DataFrame,
    columns: list[str],
    categorical: list[str],
    rows: int,
    path: Path,
    policy: MonitorPolicy | None = None,
) -> list[str]:
    """Evidently's data drift report (features and outputs) on samples of both sides, saved as HTML.

    Column kinds are given, not inferred: ``categorical`` ones as categories, the others as numbers.
    Returns the columns Evidently judged drifted on those samples (K-S, chi-square or Z-test p-values
    for a reference of at most 1000 rows, Wasserstein or Jensen-Shannon distances above).
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    numeric = [column for column in columns if column not in categorical]

    def sample(frame: pd.DataFrame) -> Dataset:
        chosen = frame[columns].sample(n=min(rows, len(frame)), random_state=0).reset_index(drop=True)
        chosen = chosen.astype({column: float for column in numeric})
        definition = DataDefinition(numerical_columns=numeric, categorical_columns=list(categorical))
        return Dataset.from_pandas(chosen, data_definition=definition)

    policy = policy or MonitorPolicy()
    small = min(rows, len(reference)) <= SMALL_REFERENCE  # p-value tests throughout, else distances
    preset = DataDriftPreset(threshold=policy.column_p_value if small else policy.column_threshold)
    snapshot = Report([preset]).run(sample(window), sample(reference))
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))
    drifted = []
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        column, threshold = config.get("column"), config.get("threshold")
        if column is not None and threshold is not None and "ValueDrift" in str(config.get("type", metric)):
            value, method = float(metric["value"]), str(config.get("method", ""))
            # as Evidently's tests compare: K-S p <= threshold, other p-values <, distances >=
            if "K-S" in method:
                hit = value <= threshold
            else:
                hit = value < threshold if "p_value" in method else value >= threshold
            if hit:
                drifted.append(column)
    return drifted


@task
def judge_performance(
    window: pd.DataFrame,
    labels_dir: Path,
    target: str,
    baseline: dict[str, float],
    policy: MonitorPolicy,
    classes: tuple[str, ...],
    model_name: str,
    version: str,
    context: dict[str, Any],
) -> Performance:
    """Join delayed labels to the window's predictions; emits ``performance.degraded`` when a metric fell
    beyond the policy's allowance (RMSE ratio for a regression, ``max_drop`` per metric for a classifier)."""
    joined = join_labels(window, load_labels(labels_dir, target)) if labels_dir.is_dir() else window.iloc[:0]
    log = run_logger(__name__)
    metrics = window_metrics(joined, classes) if len(joined) else {}
    if len(joined) < policy.min_labels or not baseline:
        log.info("performance: %d labelled rows (need %d), not judged", len(joined), policy.min_labels)
        return Performance(len(joined), metrics, baseline, degraded=False)
    worse = tuple(_worse(metrics, baseline, policy))
    performance = Performance(len(joined), metrics, baseline, bool(worse), judged=True, worse=worse)
    log.info("performance on %d labelled rows: %s", len(joined), performance.summary())
    if worse:
        allowance = {"max_drop": policy.max_drop} if classes else {"rmse_ratio": policy.rmse_ratio}
        emit(
            "performance.degraded",
            "model",
            model_name,
            {"version": version, **performance.payload(), **allowance, **context},
        )
    return performance


def window_metrics(joined: pd.DataFrame, classes: tuple[str, ...]) -> dict[str, float]:
    """RMSE of a regression's labelled rows; accuracy, macro F1, ROC AUC and log loss of a classifier's."""
    if not classes:
        return {"rmse": rmse(joined)}
    truth = category_strings(joined["label"]).to_numpy(dtype=object)
    predicted = category_strings(joined[PREDICTION]).to_numpy(dtype=object)
    probabilities = joined[probability_columns(classes)].to_numpy(dtype=float)
    return classification_metrics(truth, predicted, probabilities, list(classes))


def _worse(metrics: dict[str, float], baseline: dict[str, float], policy: MonitorPolicy) -> list[str]:
    if "rmse" in metrics:
        return ["rmse"] if "rmse" in baseline and metrics["rmse"] > baseline["rmse"] * policy.rmse_ratio else []
    worse = []
    for name, allowance in policy.max_drop.items():
        value, base = metrics.get(name, np.nan), baseline.get(name, np.nan)
        if np.isnan(value) or np.isnan(base):
            continue
        drop = base - value if CLASSIFICATION_METRICS[name] == "higher" else value - base
        if drop > allowance:
            worse.append(name)
    return worse


def holdout_figures(tracking_uri: str, model_name: str, version: str) -> dict[str, float]:
    """The holdout metrics the version's training run logged (RMSE..., or accuracy, ROC AUC...)."""
    tracker = client(tracking_uri)
    run_id = tracker.get_model_version(model_name, version).run_id
    if not run_id:
        return {}
    logged = tracker.get_run(run_id).data.metrics
    return {key: float(value) for key, value in logged.items() if key in {"rmse", *CLASSIFICATION_METRICS}}


@dataclass(frozen=True)
class EstimatedPerformance:
    """The label-free estimate of a classifier's window, against the champion's holdout accuracy."""

    estimate: Estimate
    baseline_accuracy: float | None
    dropped: bool

    def payload(self) -> dict[str, Any]:
        return {**self.estimate.payload(), "baseline_accuracy": self.baseline_accuracy, "dropped": self.dropped}


@task
def judge_estimate(
    reference: Reference,
    window: pd.DataFrame,
    baseline_accuracy: float | None,
    policy: MonitorPolicy,
    model_name: str,
    version: str,
    context: dict[str, Any],
) -> EstimatedPerformance | None:
    """Estimate a classifier's accuracy on the window from its probabilities (no labels); emits
    ``performance.estimated_drop`` when the estimate is below the holdout accuracy by more than the policy allows.
    None for a model without a calibration (a regression, or trained before calibrations were stored)."""
    if reference.calibration is None:
        return None
    found = estimate(
        reference.calibration, window[probability_columns(reference.classes)].to_numpy(dtype=float), window[PREDICTION]
    )
    dropped = (
        policy.estimated_drop is not None
        and baseline_accuracy is not None
        and found.accuracy < baseline_accuracy - policy.estimated_drop
    )
    verdict = EstimatedPerformance(found, baseline_accuracy, dropped)
    run_logger(__name__).info(
        "estimated accuracy %.3f [%.3f, %.3f] on %d rows (holdout %s)%s",
        found.accuracy,
        found.lower,
        found.upper,
        found.rows,
        "unknown" if baseline_accuracy is None else f"{baseline_accuracy:.3f}",
        " -> ESTIMATED DROP" if dropped else "",
    )
    if dropped:
        emit(
            "performance.estimated_drop",
            "model",
            model_name,
            {"version": version, **verdict.payload(), "estimated_drop": policy.estimated_drop, **context},
        )
    return verdict


@dataclass(frozen=True)
class Recorded:
    run_id: str
    run_url: str
    report_url: str


@task(retries=2, retry_delay_seconds=2)
def record_window(
    tracking_uri: str,
    experiment: str,
    model_name: str,
    version: str,
    metrics: dict[str, float],
    report: Path,
    until: float,
) -> Recorded:
    """Log a window's figures to the champion version's monitoring run (one run per version, one step per
    window: the MLflow UI charts them over time) and keep the HTML report as an artifact."""
    tracker = client(tracking_uri)
    found = tracker.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else tracker.create_experiment(experiment)
    runs = tracker.search_runs(
        [experiment_id],
        f"tags.monitored_model = '{model_name}' and tags.monitored_version = '{version}'",
        max_results=1,
    )
    if runs:
        run_id = runs[0].info.run_id
    else:
        run = tracker.create_run(
            experiment_id,
            run_name=f"monitor-{model_name}-v{version}",
            tags={"monitored_model": model_name, "monitored_version": version},
        )
        run_id = run.info.run_id
    stamp = int(until * 1000)
    tracker.log_batch(
        run_id, metrics=[mlflow.entities.Metric(key, float(value), stamp, int(until)) for key, value in metrics.items()]
    )
    name = f"{REPORT_DIR}/{report.name}"
    tracker.log_artifact(run_id, str(report), REPORT_DIR)
    tracker.set_tag(run_id, "latest_report", name)
    base = f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return Recorded(run_id, base, f"{base}/artifacts/{name}")


def window_label(since: float, until: float) -> str:
    def fmt(moment: float) -> str:
        return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S")

    return f"{fmt(since)} - {fmt(until)} UTC"
