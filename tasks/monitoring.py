"""Monitoring tasks: judge a window of served requests against the champion's training reference.

- drift: the fast decision of :mod:`tasks.drift` on every row of the window (features and the
  model's predictions), and an Evidently 0.7 ``DataDriftPreset`` report on samples of both sides
  for people to read (HTML, kept in MLflow and linked from Prefect);
- quality: the Great Expectations suite of :mod:`tasks.validate` on the live inputs;
- performance: RMSE of the predictions that have a delayed label, against the champion's holdout RMSE.

``drift.detected`` and ``performance.degraded`` are emitted here, by the tasks that decide them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from prefect import task

from mlops.policies import MonitorPolicy
from tasks.collected import join_labels, load_labels, rmse
from tasks.drift import DriftDecision, ReferenceProfile, decide
from tasks.events import emit, run_logger
from tasks.reference import PREDICTION
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
    def feature_share(self) -> float:
        return len(self.drifted_features) / len(self.features) if self.features else 0.0

    @property
    def prediction_drifted(self) -> bool:
        return PREDICTION in self.decision.drifted

    def payload(self) -> dict[str, Any]:
        return {
            "drifted_columns": self.drifted_features,
            "drift_share": round(self.feature_share, 4),
            "prediction_drifted": self.prediction_drifted,
            "scores": {column: round(score, 4) for column, score in self.decision.scores.items()},
            "threshold": self.decision.threshold,
            "rows": self.decision.rows,
            "sampled_rows": self.decision.sampled,
        }


@dataclass(frozen=True)
class Performance:
    """RMSE over the labelled rows of a window, against the champion's holdout RMSE."""

    labelled: int
    rmse: float | None
    baseline: float | None
    degraded: bool
    judged: bool = field(default=False)

    def payload(self) -> dict[str, Any]:
        return {"labelled_rows": self.labelled, "rmse": self.rmse, "baseline_rmse": self.baseline}


@task
def judge_drift(
    profile: ReferenceProfile,
    window: pd.DataFrame,
    features: list[str],
    policy: MonitorPolicy,
    model_name: str,
    version: str,
    context: dict[str, Any],
) -> DriftVerdict:
    """Decide drift on every row of the window; emits ``drift.detected`` when it drifted."""
    decision = decide(profile, window, threshold=policy.column_threshold, max_rows=policy.max_rows)
    verdict = DriftVerdict(decision, tuple(features), drifted=False)
    drifted = verdict.feature_share >= policy.drift_share or (policy.prediction_drift and verdict.prediction_drifted)
    verdict = DriftVerdict(decision, tuple(features), drifted)
    run_logger(__name__).info(
        "drift: %d of %d features drifted (%s), prediction %s -> %s",
        len(verdict.drifted_features),
        len(features),
        ", ".join(verdict.drifted_features) or "none",
        "drifted" if verdict.prediction_drifted else "stable",
        "DRIFT" if drifted else "no drift",
    )
    if drifted:
        emit("drift.detected", "model", model_name, {"version": version, **verdict.payload(), **context})
    return verdict


@task
def drift_report(reference: pd.DataFrame, window: pd.DataFrame, columns: list[str], rows: int, path: Path) -> list[str]:
    """Evidently's data drift report (features and prediction) on samples of both sides, saved as HTML.

    Returns the columns Evidently judged drifted on those samples (its K-S test below 1000 rows,
    the normed Wasserstein distance above).
    """
    from evidently import Report
    from evidently.presets import DataDriftPreset

    def sample(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[columns].sample(n=min(rows, len(frame)), random_state=0).reset_index(drop=True)

    snapshot = Report([DataDriftPreset()]).run(sample(window), sample(reference))
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))
    drifted = []
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        column, threshold = config.get("column"), config.get("threshold")
        if column is not None and threshold is not None and "ValueDrift" in str(config.get("type", metric)):
            value = float(metric["value"])
            # p-value tests drift below their threshold, distances above it
            if (value < threshold) if "p_value" in config.get("method", "") else value > threshold:
                drifted.append(column)
    return drifted


@task
def judge_performance(
    window: pd.DataFrame,
    labels_dir: Path,
    target: str,
    baseline: float | None,
    policy: MonitorPolicy,
    model_name: str,
    version: str,
    context: dict[str, Any],
) -> Performance:
    """Join delayed labels to the window's predictions; emits ``performance.degraded`` over the threshold."""
    joined = join_labels(window, load_labels(labels_dir, target)) if labels_dir.is_dir() else window.iloc[:0]
    log = run_logger(__name__)
    if len(joined) < policy.min_labels or baseline is None:
        log.info("performance: %d labelled rows (need %d), not judged", len(joined), policy.min_labels)
        return Performance(len(joined), rmse(joined) if len(joined) else None, baseline, degraded=False)
    value = rmse(joined)
    degraded = value > baseline * policy.rmse_ratio
    performance = Performance(len(joined), value, baseline, degraded, judged=True)
    log.info("performance: RMSE %.3f on %d labelled rows (champion holdout %.3f)", value, len(joined), baseline)
    if degraded:
        emit(
            "performance.degraded",
            "model",
            model_name,
            {"version": version, **performance.payload(), "rmse_ratio": policy.rmse_ratio, **context},
        )
    return performance


def holdout_rmse(tracking_uri: str, model_name: str, version: str) -> float | None:
    """The holdout RMSE the version's training run logged."""
    tracker = client(tracking_uri)
    run_id = tracker.get_model_version(model_name, version).run_id
    return tracker.get_run(run_id).data.metrics.get("rmse") if run_id else None


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
