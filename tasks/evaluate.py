"""Champion/challenger comparison on the same holdout, by explicit promotion criteria."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import mlflow
from prefect import task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, Field

from tasks.events import artifact_key
from tasks.tracking import alias_version, client
from tasks.train import Candidate, TrainingSet, regression_metrics

CHAMPION = "champion"
CHALLENGER = "challenger"


class PromotionCriteria(BaseModel):
    """When a candidate counts as better than the champion."""

    min_rmse_improvement: float = Field(0.01, ge=0, description="Required relative RMSE improvement (0.01 = 1%).")
    max_mae_regression: float = Field(0.02, ge=0, description="Allowed relative MAE increase.")
    max_r2_drop: float = Field(0.01, ge=0, description="Allowed absolute R² decrease.")


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
            return f"no champion yet; candidate rmse {self.candidate['rmse']:.3f}"
        return ", ".join(
            f"{row['metric']} {row['candidate']:.3f} vs {row['champion']:.3f} ({'ok' if row['passed'] else 'fails'})"
            for row in self.rows
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary}


def compare(
    candidate: dict[str, float], champion: dict[str, float], criteria: PromotionCriteria
) -> tuple[bool, tuple[dict[str, Any], ...]]:
    """Apply the criteria; lower RMSE/MAE and higher R² are better."""
    checks = [
        (
            "rmse",
            candidate["rmse"] <= champion["rmse"] * (1 - criteria.min_rmse_improvement),
            f"<= champion x {1 - criteria.min_rmse_improvement:g}",
        ),
        (
            "mae",
            candidate["mae"] <= champion["mae"] * (1 + criteria.max_mae_regression),
            f"<= champion x {1 + criteria.max_mae_regression:g}",
        ),
        ("r2", candidate["r2"] >= champion["r2"] - criteria.max_r2_drop, f">= champion - {criteria.max_r2_drop:g}"),
    ]
    rows = tuple(
        {
            "metric": metric,
            "candidate": candidate[metric],
            "champion": champion[metric],
            "change": candidate[metric] - champion[metric],
            "rule": rule,
            "passed": bool(passed),
        }
        for metric, passed, rule in checks
    )
    return all(row["passed"] for row in rows), rows


def champion_version(tracking_uri: str, model_name: str) -> str | None:
    """The version the ``champion`` alias points to, None if the model or alias does not exist."""
    return alias_version(tracking_uri, model_name, CHAMPION)


@task(retries=2, retry_delay_seconds=2)
def evaluate_against_champion(
    candidate: Candidate,
    data: TrainingSet,
    tracking_uri: str,
    model_name: str,
    criteria: PromotionCriteria,
) -> Comparison:
    """Score the champion on the candidate's holdout and apply the promotion criteria."""
    _, _, x_holdout, y_holdout = data.split()
    version = champion_version(tracking_uri, model_name)
    if version is None:
        comparison = Comparison(True, None, candidate.metrics, {}, ())
    else:
        # The trusted skops types were recorded in the model's flavor config when it was logged.
        champion_model = mlflow.sklearn.load_model(f"models:/{model_name}/{version}")
        champion = regression_metrics(y_holdout, champion_model.predict(x_holdout))
        better, rows = compare(candidate.metrics, champion, criteria)
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
