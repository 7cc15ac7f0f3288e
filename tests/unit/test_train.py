"""Training pieces that need no server: the split, the pipelines per family and task, the promotion rule."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops.spec import REGRESSION_FAMILIES, load_spec
from tasks.evaluate import compare
from tasks.features import build_estimator
from tasks.metrics import regression_metrics
from tasks.train import TrainingSet, holdout_mask

SPECS = Path(__file__).resolve().parents[2] / "models"
DIABETES = load_spec("diabetes", SPECS)


def test_a_row_held_out_once_stays_held_out_as_data_grows(batches: list[pd.DataFrame]) -> None:
    small = pd.concat(batches[:2], ignore_index=True)
    large = pd.concat(batches, ignore_index=True)
    small_mask = holdout_mask(small, 0.2)
    large_mask = holdout_mask(large, 0.2)
    assert np.array_equal(small_mask, large_mask[: len(small)])
    assert 0.1 < large_mask.mean() < 0.3


def test_split_refuses_too_little_data(batches: list[pd.DataFrame]) -> None:
    with pytest.raises(ValueError, match="not enough data"):
        TrainingSet(batches[0].head(15), DIABETES).split()


@pytest.mark.parametrize("family", REGRESSION_FAMILIES)
def test_every_regression_family_learns_something(family: str, batches: list[pd.DataFrame]) -> None:
    x_train, y_train, x_holdout, y_holdout = TrainingSet(pd.concat(batches, ignore_index=True), DIABETES).split()
    model = build_estimator(DIABETES, family).fit(x_train, y_train)
    assert regression_metrics(y_holdout, model.predict(x_holdout))["r2"] > 0.2


CHAMPION = {"rmse": 60.0, "mae": 50.0, "r2": 0.40}


def test_clearly_better_candidate_passes() -> None:
    better, rows = compare({"rmse": 55.0, "mae": 45.0, "r2": 0.45}, CHAMPION, DIABETES)
    assert better and all(row["passed"] for row in rows)


def test_marginal_rmse_gain_is_not_enough() -> None:
    better, rows = compare({"rmse": 59.8, "mae": 45.0, "r2": 0.45}, CHAMPION, DIABETES)
    assert not better and [row["metric"] for row in rows if not row["passed"]] == ["rmse"]


def test_regression_on_another_metric_blocks() -> None:
    better, rows = compare({"rmse": 55.0, "mae": 52.0, "r2": 0.45}, CHAMPION, DIABETES)
    assert not better and [row["metric"] for row in rows if not row["passed"]] == ["mae"]


def test_classifier_criteria_improve_auc_absolutely_and_bound_log_loss_relatively() -> None:
    spec = load_spec("tumours", SPECS)  # roc_auc +0.002, log_loss x1.05, accuracy -0.01
    champion = {"roc_auc": 0.980, "log_loss": 0.20, "accuracy": 0.95, "f1_macro": 0.94}
    better, _ = compare({"roc_auc": 0.983, "log_loss": 0.205, "accuracy": 0.945, "f1_macro": 0.9}, champion, spec)
    assert better
    worse, rows = compare({"roc_auc": 0.990, "log_loss": 0.22, "accuracy": 0.95, "f1_macro": 0.9}, champion, spec)
    assert not worse and [row["metric"] for row in rows if not row["passed"]] == ["log_loss"]
    nan, _ = compare({"roc_auc": float("nan"), "log_loss": 0.1, "accuracy": 1.0, "f1_macro": 1.0}, champion, spec)
    assert not nan
