"""Champion/challenger comparison on the same holdout, by explicit promotion criteria (the champion scored from
its checked ONNX bundle, as it serves)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import mlflow
import numpy as np
from prefect import task
from prefect.artifacts import create_table_artifact

from mlops.spec import ModelSpec
from tasks.bundle_scorer import BundleScorer
from tasks.events import artifact_key
from tasks.metrics import holdout_metrics
from tasks.tracking import alias_version, client
from tasks.train import Candidate, TrainingSet

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class Comparison:
    """Candidate vs champion on one holdout.

    Attributes:
        better: Whether the candidate meets every criterion (always True without a champion).
        champion_version: The champion's model version, None if there is none.
        candidate: Candidate metrics.
        champion: Champion metrics on the same holdout (empty without a champion).
        rows: The comparison table, one row per metric.
    """

    better: bool
    champion_version: str | None
    candidate: dict[str, float]
    champion: dict[str, float]
    rows: tuple[dict[str, Any], ...]

    @property
    def summary(self) -> str:
        if self.champion_version is None:
            figures = ", ".join(f"{key} {value:.3f}" for key, value in self.candidate.items())
            return f"no champion yet; candidate {figures}"
        return ", ".join(
            f"{row['metric']} {row['candidate']:.3f} vs {row['champion']:.3f} ({'ok' if row['passed'] else 'fails'})"
            for row in self.rows
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary}


ERRORS = ("rmse", "mae", "log_loss")  # lower is better; compared relatively (scores absolutely)


def _rule(metric: str, champion: float, allowed: float, improve: bool) -> tuple[float, str]:
    """The bound a candidate's ``metric`` must meet, and how it reads."""
    if metric in ERRORS:
        factor = 1 - allowed if improve else 1 + allowed
        return champion * factor, f"<= champion x {factor:g}"
    return (
        (champion + allowed, f">= champion + {allowed:g}")
        if improve
        else (champion - allowed, f">= champion - {allowed:g}")
    )


def compare(
    candidate: dict[str, float], champion: dict[str, float], spec: ModelSpec
) -> tuple[bool, tuple[dict[str, Any], ...]]:
    """The spec's promotion rule: the primary metric improves by ``min_improvement``, the others worsen by no
    more than their tolerance (relative for errors, absolute for scores). A NaN metric never passes."""
    checks = [(spec.primary_metric, spec.promotion.min_improvement, True)] + [
        (metric, allowed, False) for metric, allowed in spec.tolerances.items()
    ]
    rows = []
    for metric, allowed, improve in checks:
        bound, rule = _rule(metric, champion[metric], allowed, improve)
        value = candidate[metric]
        passed = value <= bound if metric in ERRORS else value >= bound
        rows.append(
            {
                "metric": metric,
                "candidate": value,
                "champion": champion[metric],
                "change": value - champion[metric],
                "rule": rule,
                "passed": bool(passed and np.isfinite(value)),
            }
        )
    return all(row["passed"] for row in rows), tuple(rows)


def champion_version(tracking_uri: str, model_name: str) -> str | None:
    """The version the ``champion`` alias points to, None if the model or alias does not exist."""
    return alias_version(tracking_uri, model_name, CHAMPION)


@task(retries=2, retry_delay_seconds=2)
def evaluate_against_champion(
    candidate: Candidate,
    data: TrainingSet,
    tracking_uri: str,
    model_name: str,
    spec: ModelSpec,
) -> Comparison:
    """Score the champion on the candidate's holdout and apply the promotion criteria."""
    _, _, x_holdout, y_holdout = data.split()
    version = champion_version(tracking_uri, model_name)
    if version is None:
        comparison = Comparison(True, None, candidate.metrics, {}, ())
    else:
        # The champion as it serves: its ONNX bundle, checked against the sha256 its registration recorded
        # (nothing the registry holds is unpickled).
        champion_model = BundleScorer.from_registry(tracking_uri, f"models:/{model_name}/{version}")
        champion = holdout_metrics(spec.task, champion_model, x_holdout, y_holdout)
        better, rows = compare(candidate.metrics, champion, spec)
        comparison = Comparison(better, version, candidate.metrics, champion, rows)
    tracker = client(tracking_uri)
    tracker.log_dict(candidate.run_id, comparison.to_dict(), "comparison.json")
    if comparison.champion:
        tracker.log_batch(
            candidate.run_id,
            metrics=[
                mlflow.entities.Metric(f"champion_{key}", value, 0, 0) for key, value in comparison.champion.items()
            ],
        )
    return comparison


@task
def publish_comparison(comparison: Comparison, model_name: str) -> None:
    """Show the comparison table in the Prefect UI."""
    table = [dict(row) for row in comparison.rows] or [
        {"metric": key, "candidate": value, "champion": None} for key, value in comparison.candidate.items()
    ]
    create_table_artifact(
        key=artifact_key(model_name, "comparison"),
        table=table,
        description=f"Candidate vs champion (version {comparison.champion_version}): {comparison.summary}",
    )
