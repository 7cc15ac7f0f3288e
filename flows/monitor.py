"""The watching half of the loop: judge the requests the champion served against its training reference.

Each run takes one window of collected requests (default: the last hour) and

1. decides drift on every row (features and predictions; :mod:`tasks.drift`) and emits
   ``drift.detected`` when the data set drifted;
2. writes Evidently's data drift report (HTML) into the champion's monitoring run in MLflow, under
   ``<home>/reports/<model>/`` and as a Prefect link artifact;
3. runs the Great Expectations suite on the live inputs;
4. joins the labels that arrived for the window's requests (``<home>/labels/<model>/``) and emits
   ``performance.degraded`` when RMSE exceeds the champion's holdout RMSE by the policy's factor.

Only rows served by the champion version are judged (its predictions are what its reference
describes). Run with the defaults: ``python -m flows.monitor [--minutes 60]``; the scheduled
deployment judges every model (:mod:`flows.monitor_all`).
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_table_artifact
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from flows.run_once import print_outcome
from mlops.policies import MonitorPolicy
from mlops.settings import get_settings
from serving.collector import requests_dir
from tasks.collected import load_requests
from tasks.evaluate import champion_version
from tasks.events import artifact_key
from tasks.monitoring import (
    drift_report,
    holdout_rmse,
    judge_drift,
    judge_performance,
    record_window,
    window_label,
)
from tasks.reference import PREDICTION, load_reference
from tasks.tracking import check_tracking_server
from tasks.validate import validate_batch


class NoChampionError(RuntimeError):
    """There is no champion version to monitor."""


class MonitorParameters(BaseModel):
    """Parameters of a monitoring run (rendered as a form in the Prefect UI)."""

    window_minutes: float = Field(60, gt=0, description="Judge the requests served in this many minutes.")
    window_end: datetime | None = Field(None, description="End of the window (default: now); set it to re-judge one.")
    policy: MonitorPolicy | None = Field(None, description="Replaces the spec's monitoring policy for this run.")
    model_name: str | None = Field(None, description="The model (its spec's name; default: MLOPS_MODEL_NAME).")


@dataclass(frozen=True)
class MonitorOutcome:
    """What a monitoring run found.

    Attributes:
        status: ``judged``, ``too-few-rows`` or ``not-supported`` (a classifier or a model with categorical
            inputs: their drift and performance are not judged yet; nothing emitted).
        message: One line for people.
        version: The champion version judged.
        rows: Rows served by it in the window.
        drift: Whether the window drifted, and the per-column figures.
        evidently_drifted: Columns Evidently's report judged drifted on its samples.
        quality: Whether the live inputs passed the validation suite, and what failed.
        performance: Labelled rows, RMSE, the champion's holdout RMSE, and whether it degraded.
        report_url: The drift report in the MLflow UI; report_file: the same on disk.
    """

    status: str
    message: str
    model_name: str
    version: str
    window: str
    rows: int = 0
    drift: dict[str, Any] = field(default_factory=dict)
    evidently_drifted: tuple[str, ...] = ()
    quality: dict[str, Any] = field(default_factory=dict)
    performance: dict[str, Any] = field(default_factory=dict)
    report_url: str | None = None
    report_file: str | None = None


@flow(name="monitor-model", log_prints=True)
def monitor_flow(params: MonitorParameters | None = None) -> MonitorOutcome:
    """Judge the last window of served requests: drift (Evidently), live-input quality (GX), delayed-label RMSE."""
    params = params or MonitorParameters()
    settings = get_settings()
    logger = get_run_logger()
    spec = settings.spec(params.model_name)
    model_name = spec.name
    policy = params.policy or spec.monitoring
    features = spec.feature_names
    tracking = settings.tracking_uri
    check_tracking_server(tracking)
    version = champion_version(tracking, model_name)
    if version is None:
        raise NoChampionError(f"{model_name} has no champion to monitor; train one first (`uv run mlops train`)")
    categorical = [feature.name for feature in spec.features if feature.is_categorical]
    if spec.task.is_classification or categorical:
        what = f"a {spec.task.value} classifier" if spec.task.is_classification else f"categories ({categorical})"
        message = f"{model_name} v{version}: monitoring of {what} is not supported yet; nothing judged"
        logger.warning("%s", message)
        return MonitorOutcome("not-supported", message, model_name, version, "")

    until = params.window_end.timestamp() if params.window_end else time.time()
    since = until - params.window_minutes * 60
    label = window_label(since, until)
    served = load_requests(requests_dir(settings.resolved_home, model_name), since, until, features)
    window = served[served["model_version"] == version].reset_index(drop=True)
    if len(window) < policy.min_rows:
        message = (
            f"{len(window)} rows served by {model_name} version {version} in {label} "
            f"(need {policy.min_rows}): nothing judged"
        )
        logger.info("%s", message)
        return MonitorOutcome("too-few-rows", message, model_name, version, label, len(window))

    context = {"window": label, "flow_run_id": str(flow_run.id or "none")}
    reference = load_reference(tracking, model_name, version)
    verdict = judge_drift(reference.profile, window, features, policy, model_name, version, context)

    reports = settings.resolved_home / "reports" / model_name
    report = reports / f"drift-{datetime.fromtimestamp(until, UTC):%Y%m%dT%H%M%S}.html"
    columns = [*features, PREDICTION]
    evidently_drifted = drift_report(reference.sample, window, columns, policy.report_rows, report)
    shutil.copyfile(report, reports / "drift-latest.html")

    quality = validate_batch(window[features], f"requests {label}", spec, reference.sample[features], with_target=False)
    baseline = holdout_rmse(tracking, model_name, version)
    performance = judge_performance(
        window,
        settings.resolved_home / "labels" / model_name,
        spec.target.column,
        baseline,
        policy,
        model_name,
        version,
        context,
    )

    metrics = {
        "rows": float(len(window)),
        "drift_share": verdict.feature_share,
        "drifted": float(verdict.drifted),
        "quality_failures": float(len(quality.failures)),
        "labelled_rows": float(performance.labelled),
        **{f"drift_score.{column}": score for column, score in verdict.decision.scores.items()},
    }
    if performance.rmse is not None:
        metrics["rmse"] = performance.rmse
    recorded = record_window(tracking, f"{spec.experiment}-monitoring", model_name, version, metrics, report, until)
    _publish(model_name, verdict.decision.scores, verdict.decision.threshold, recorded.report_url, label)

    message = (
        f"{model_name} v{version}, {len(window)} rows in {label}: "
        + (f"DRIFT in {', '.join(verdict.drifted_features) or 'predictions'}" if verdict.drifted else "no drift")
        + f"; inputs {'passed' if quality.success else 'failed'} validation"
        + (f"; RMSE {performance.rmse:.2f} vs {performance.baseline:.2f}" if performance.judged else "")
        + ("; DEGRADED" if performance.degraded else "")
    )
    logger.info("%s", message)
    return MonitorOutcome(
        status="judged",
        message=message,
        model_name=model_name,
        version=version,
        window=label,
        rows=len(window),
        drift={"drifted": verdict.drifted, **verdict.payload()},
        evidently_drifted=tuple(evidently_drifted),
        quality={"success": quality.success, "reason": quality.reason},
        performance={**performance.payload(), "degraded": performance.degraded},
        report_url=recorded.report_url,
        report_file=str(report),
    )


def _publish(model_name: str, scores: dict[str, float], threshold: float, report_url: str, label: str) -> None:
    create_table_artifact(
        key=artifact_key("drift", model_name),
        table=[{"column": c, "score": round(s, 4), "drifted": s > threshold} for c, s in scores.items()],
        description=f"Normed Wasserstein distance per column vs the training reference, {label} "
        f"(drift above {threshold})",
    )
    create_link_artifact(
        key=artifact_key("drift-report", model_name),
        link=report_url,
        link_text=f"Evidently drift report, {label}",
        description="The full Evidently report in the MLflow UI (artifact of the champion's monitoring run).",
    )


def main(argv: list[str] | None = None) -> int:
    """Run the flow once over the last ``--minutes`` and print the outcome."""
    parser = argparse.ArgumentParser(prog="python -m flows.monitor", description=__doc__)
    parser.add_argument("--minutes", type=float, default=60.0)
    args = parser.parse_args(argv)
    return print_outcome(lambda: monitor_flow(MonitorParameters(window_minutes=args.minutes)), "monitoring")


if __name__ == "__main__":
    raise SystemExit(main())
