"""The watching half of the loop: judge the requests the champion served against its training reference.

Each run takes one window of collected requests (default: the last hour) and

1. decides drift on every row (features by their kind, and the model's outputs: a regression's
   prediction, a classifier's label and class probabilities; :mod:`tasks.drift`) and emits
   ``drift.detected`` when the data set drifted;
2. writes Evidently's data drift report (HTML) into the champion's monitoring run in MLflow, under
   ``<home>/reports/<model>/`` and as a Prefect link artifact;
3. runs the Great Expectations suite on the live inputs;
4. joins the labels that arrived for the window's requests (``<home>/labels/<model>/``) and emits
   ``performance.degraded`` when RMSE exceeds the champion's holdout RMSE by the policy's factor, or a
   classifier's accuracy, macro F1, ROC AUC or log loss is worse than its holdout figure by more than
   the policy's ``max_drop``;
5. for a classifier, estimates accuracy (and binary ROC AUC) from its probabilities before any label
   arrives (:mod:`tasks.estimate`) and emits ``performance.estimated_drop`` when the estimate falls the
   policy's ``estimated_drop`` below the holdout accuracy.

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
from tasks.collected import load_requests
from tasks.drift import DriftDecision
from tasks.evaluate import champion_version
from tasks.events import artifact_key
from tasks.monitoring import (
    drift_report,
    holdout_figures,
    judge_drift,
    judge_estimate,
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
        status: ``judged`` or ``too-few-rows``.
        message: One line for people.
        version: The champion version judged.
        rows: Rows served by it in the window.
        drift: Whether the window drifted, and the per-column figures.
        evidently_drifted: Columns Evidently's report judged drifted on its samples.
        quality: Whether the live inputs passed the validation suite, and what failed.
        performance: Labelled rows, the window's metrics, the champion's holdout figures, whether it degraded.
        estimated: Classifiers: the label-free accuracy estimate with its band, and whether it dropped.
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
    estimated: dict[str, Any] = field(default_factory=dict)
    report_url: str | None = None
    report_file: str | None = None


@flow(name="monitor-model", log_prints=True)
def monitor_flow(params: MonitorParameters | None = None) -> MonitorOutcome:
    """Judge the last window of served requests: drift (Evidently), live-input quality (GX), performance from
    delayed labels and, for classifiers, estimated from the model's probabilities."""
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

    until = params.window_end.timestamp() if params.window_end else time.time()
    since = until - params.window_minutes * 60
    label = window_label(since, until)
    reference = load_reference(tracking, model_name, version)
    outputs = reference.output_columns
    served = load_requests(settings.requests_for(model_name), since, until, features, outputs[1:])
    window = served[served["model_version"] == version].reset_index(drop=True)
    skipped = served.attrs.get("skipped", {})
    if any(skipped.values()):
        logger.warning(
            "left out of %s: %d damaged collection line(s) and %d row(s) without a usable answer (null or not finite)",
            label,
            skipped.get("lines", 0),
            skipped.get("rows", 0),
        )
    if len(window) < policy.min_rows:
        message = (
            f"{len(window)} rows served by {model_name} version {version} in {label} "
            f"(need {policy.min_rows}): nothing judged"
        )
        logger.info("%s", message)
        return MonitorOutcome("too-few-rows", message, model_name, version, label, len(window))

    context = {"window": label, "flow_run_id": str(flow_run.id or "none")}
    verdict = judge_drift(reference, window, features, policy, model_name, version, context)

    reports = settings.resolved_home / "reports" / model_name
    report = reports / f"drift-{datetime.fromtimestamp(until, UTC):%Y%m%dT%H%M%S}.html"
    columns = [*features, *outputs]
    categorical = [*spec.categorical_features, *([PREDICTION] if reference.classes else [])]
    evidently_drifted = drift_report(reference.sample, window, columns, categorical, policy.report_rows, report, policy)
    shutil.copyfile(report, reports / "drift-latest.html")

    quality = validate_batch(window[features], f"requests {label}", spec, reference.sample[features], with_target=False)
    baseline = holdout_figures(tracking, model_name, version)
    performance = judge_performance(
        window,
        settings.resolved_home / "labels" / model_name,
        spec.target.column,
        baseline,
        policy,
        reference.classes,
        model_name,
        version,
        context,
    )
    estimated = judge_estimate(reference, window, baseline.get("accuracy"), policy, model_name, version, context)

    metrics = {
        "rows": float(len(window)),
        "drift_share": verdict.feature_share,
        "drifted": float(verdict.drifted),
        "quality_failures": float(len(quality.failures)),
        "labelled_rows": float(performance.labelled),
        "skipped_lines": float(skipped.get("lines", 0)),
        "skipped_rows": float(skipped.get("rows", 0)),
        **{f"drift_score.{column}": score for column, score in verdict.decision.scores.items()},
        **{key: value for key, value in performance.metrics.items() if value == value},  # NaN: not logged
        **({key: value for key, value in estimated.estimate.payload().items()} if estimated else {}),
    }
    recorded = record_window(tracking, f"{spec.experiment}-monitoring", model_name, version, metrics, report, until)
    _publish(model_name, verdict.decision, recorded.report_url, label)

    message = (
        f"{model_name} v{version}, {len(window)} rows in {label}: "
        + (f"DRIFT in {', '.join(verdict.drifted_features) or 'outputs'}" if verdict.drifted else "no drift")
        + f"; inputs {'passed' if quality.success else 'failed'} validation"
        + (f"; {performance.summary()}" if performance.judged else "")
        + ("; DEGRADED" if performance.degraded else "")
        + (
            f"; estimated accuracy {estimated.estimate.accuracy:.3f} "
            f"[{estimated.estimate.lower:.3f}, {estimated.estimate.upper:.3f}]"
            + (" ESTIMATED DROP" if estimated.dropped else "")
            if estimated
            else ""
        )
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
        estimated=estimated.payload() if estimated else {},
        report_url=recorded.report_url,
        report_file=str(report),
    )


def _publish(model_name: str, decision: DriftDecision, report_url: str, label: str) -> None:
    drifted = set(decision.drifted)
    create_table_artifact(
        key=artifact_key("drift", model_name),
        table=[
            {"column": c, "score": round(s, 6), "drift when": decision.rule(c), "drifted": c in drifted}
            for c, s in decision.scores.items()
        ],
        description=f"Each column vs the training reference by Evidently's statistic for it, {label}",
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
