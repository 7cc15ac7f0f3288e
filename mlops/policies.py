"""Policies a model spec carries and tasks apply: validation, monitoring and rollout.

They live at the bottom of the layers (tasks and flows import them) so that a spec is checked
whole, before anything runs, without importing scikit-learn, Great Expectations or Prefect.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Evidently 0.7's defaults: distances (normed Wasserstein, Jensen-Shannon) from 0.1 mean drift for a
# reference of more than 1000 rows; p-values (K-S, chi-square, Z-test) under 0.05 at or below 1000 rows
EVIDENTLY_THRESHOLD = 0.1
EVIDENTLY_P_VALUE = 0.05


class RolloutConfig(BaseModel):
    """Schedule and thresholds of a canary rollout (flow parameters)."""

    model_config = ConfigDict(extra="forbid")

    steps: list[int] = Field(default_factory=lambda: [10, 25, 50, 100], description="Canary weight (%) per step.")
    bake_seconds: float = Field(30.0, gt=0, description="Minimum observation time per step.")
    min_requests: int = Field(
        30, ge=0, description="Canary requests needed for a verdict (0: a step without traffic passes on its checks)."
    )
    max_wait_factor: float = Field(4.0, ge=1, description="A step waits at most bake_seconds x this for traffic.")
    max_error_rate: float = Field(
        0.01, ge=0, le=1, description="Largest share of canary faults (5xx, 422) beyond stable's on the same window."
    )
    max_p99_ratio: float = Field(2.0, ge=1, description="Canary p99 may be this many times the stable p99 ...")
    p99_slack_ms: float = Field(10.0, ge=0, description="... or the stable p99 plus this, whichever is larger.")
    max_ks: float = Field(
        0.3,
        gt=0,
        le=1,
        description="Largest distance between canary and stable predictions: KS for values, Cramér's V of the "
        "predicted-class counts for a classifier's labels.",
    )
    ks_alpha: float = Field(0.001, gt=0, lt=1, description="Significance a KS failure also needs.")
    min_label_agreement: float = Field(
        0.9,
        ge=0,
        le=1,
        description="A classifier canary on mirrored traffic must give the label clients got at least this often.",
    )
    min_agreement_rows: int = Field(20, ge=1, description="Mirrored rows compared before agreement is judged.")
    compare_predictions: bool = Field(
        True,
        description="Roll back when canary and stable predictions differ (KS). Off: the KS distance is only "
        "reported — for retrains after drift, whose predictions are meant to move (the known-answer check stays).",
    )
    shadow_seconds: float | None = Field(
        None,
        ge=0,
        description="Shadow phase first: the canary gets mirrored traffic only, for this long (0: none). Default: "
        "bake_seconds for a classifier whose labels are compared (compare_predictions): label agreement needs both "
        "answers to one request (a canary that swaps two balanced classes keeps their distribution); none otherwise, "
        "as for a regression (errors and latency are judged by the steps, which stop at the first excess).",
    )
    target: Literal["process", "docker"] = Field("process", description="Where deployments run.")
    canary_env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra MLOPS_SERVING_* settings of the canary deployment (e.g. threads, or chaos knobs).",
    )

    def shadow_for(self, classifier: bool) -> float:
        """Seconds of shadow phase for a classifier's or a regression's canary: by default one bake where it
        judges something the steps cannot, a classifier's label agreement."""
        if self.shadow_seconds is not None:
            return self.shadow_seconds
        return self.bake_seconds if classifier and self.compare_predictions else 0.0

    @field_validator("steps")
    @classmethod
    def _increasing_to_100(cls, steps: list[int]) -> list[int]:
        if not steps or steps[-1] != 100 or any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
            raise ValueError(f"steps must increase strictly within 1..100 and end at 100, got {steps}")
        return steps


class MonitorPolicy(BaseModel):
    """When a window counts as drifted or degraded (Evidently's defaults for drift)."""

    model_config = ConfigDict(extra="forbid")

    min_rows: int = Field(100, ge=1, description="Fewest served rows in the window to judge it at all.")
    column_threshold: float = Field(
        EVIDENTLY_THRESHOLD,
        gt=0,
        description="Distance (normed Wasserstein, Jensen-Shannon) from which a column drifted (reference > 1000 rows)",
    )
    column_p_value: float = Field(
        EVIDENTLY_P_VALUE,
        gt=0,
        lt=1,
        description="p-value (K-S, chi-square, Z-test) under which a column drifted (reference <= 1000 rows).",
    )
    drift_share: float = Field(
        0.5, gt=0, le=1, description="Share of drifted feature columns from which the data set drifted."
    )
    prediction_drift: bool = Field(
        True,
        description="A drifted output alone (prediction, label, class probability) also counts as drift — when its "
        "distance (Wasserstein, Jensen-Shannon) also reaches column_threshold, so a p-value test on a large window "
        "does not raise alarms over differences too small to matter.",
    )
    max_rows: int = Field(200_000, ge=1000, description="Rows sampled for the decision in a larger window.")
    report_rows: int = Field(5000, ge=100, description="Rows of each side in the Evidently report.")
    min_labels: int = Field(30, ge=1, description="Fewest labelled rows to judge performance.")
    rmse_ratio: float = Field(
        1.25, gt=1, description="Degraded when the window's RMSE exceeds the champion's holdout RMSE by this factor."
    )
    max_drop: dict[str, float] = Field(
        default_factory=lambda: {"accuracy": 0.05, "roc_auc": 0.05},
        description="Classifiers: degraded when a labelled window's metric (accuracy, f1_macro, roc_auc, log_loss) "
        "is worse than the champion's holdout figure by more than this.",
    )
    estimated_drop: float | None = Field(
        0.05,
        gt=0,
        description="Classifiers: emit performance.estimated_drop when the label-free accuracy estimate falls this "
        "far below the champion's holdout accuracy (null: never).",
    )

    @field_validator("max_drop")
    @classmethod
    def _known_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - {"accuracy", "f1_macro", "roc_auc", "log_loss"})
        if unknown:
            raise ValueError(f"max_drop names unknown metric(s) {unknown}; use accuracy, f1_macro, roc_auc, log_loss")
        return value


class ValidationPolicy(BaseModel):
    """How strict validation is; distribution bounds are relative to the reference data."""

    model_config = ConfigDict(extra="forbid")

    range_margin: float = Field(
        0.5, ge=0, description="Allowed overshoot of the reference min/max, as a share of its range."
    )
    mean_tolerance: float = Field(
        0.5, gt=0, description="Allowed shift of a column mean, in reference standard deviations."
    )
    mean_noise_z: float = Field(
        4.0, gt=0, description="The mean bound is never tighter than this many standard errors (small batches)."
    )
    stdev_ratio: float = Field(
        2.0, gt=1, description="Allowed factor between a batch's and the reference's standard deviation."
    )
    min_rows: int = Field(2, ge=1, description="Fewest rows a batch may have.")
    range_hard_margin: float = Field(
        2.0, ge=0, description="Beyond the reference min/max by this many ranges, even one value rejects a batch."
    )
    range_mostly: float = Field(
        0.98, gt=0, le=1, description="Share of a batch's values that must lie in the range (outliers happen)."
    )
    max_missing: float = Field(0.2, ge=0, le=1, description="Largest share of missing values in a nullable column.")
    new_categories: Literal["report", "reject"] = Field(
        "report", description="A category never seen in accepted data: report it, or reject the batch."
    )
