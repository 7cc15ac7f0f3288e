"""Training pieces that need no server: the split, the pipelines, the promotion rule."""

import numpy as np
import pandas as pd
import pytest

from mlops.settings import Settings
from tasks.evaluate import PromotionCriteria, compare
from tasks.train import ModelFamily, build_pipeline, holdout_mask, regression_metrics, split

FEATURES = list(Settings().feature_columns)


def test_a_row_held_out_once_stays_held_out_as_data_grows(batches: list[pd.DataFrame]) -> None:
    small = pd.concat(batches[:2], ignore_index=True)
    large = pd.concat(batches, ignore_index=True)
    small_mask = holdout_mask(small, 0.2)
    large_mask = holdout_mask(large, 0.2)
    assert np.array_equal(small_mask, large_mask[: len(small)])
    assert 0.1 < large_mask.mean() < 0.3


def test_split_refuses_too_little_data(batches: list[pd.DataFrame]) -> None:
    with pytest.raises(ValueError, match="not enough data"):
        split(batches[0].head(15), FEATURES, "target", 0.2)


@pytest.mark.parametrize("family", list(ModelFamily))
def test_every_family_learns_something(family: ModelFamily, batches: list[pd.DataFrame]) -> None:
    frame = pd.concat(batches, ignore_index=True)
    x_train, y_train, x_holdout, y_holdout = split(frame, FEATURES, "target", 0.2)
    model = build_pipeline(family, seed=0).fit(x_train, y_train)
    assert regression_metrics(y_holdout, model.predict(x_holdout))["r2"] > 0.2


CHAMPION = {"rmse": 60.0, "mae": 50.0, "r2": 0.40}


def test_clearly_better_candidate_passes() -> None:
    better, rows = compare({"rmse": 55.0, "mae": 45.0, "r2": 0.45}, CHAMPION, PromotionCriteria())
    assert better and all(row["passed"] for row in rows)


def test_marginal_rmse_gain_is_not_enough() -> None:
    better, rows = compare({"rmse": 59.8, "mae": 45.0, "r2": 0.45}, CHAMPION, PromotionCriteria())
    assert not better and [row["metric"] for row in rows if not row["passed"]] == ["rmse"]


def test_regression_on_another_metric_blocks() -> None:
    better, rows = compare({"rmse": 55.0, "mae": 52.0, "r2": 0.45}, CHAMPION, PromotionCriteria())
    assert not better and [row["metric"] for row in rows if not row["passed"]] == ["mae"]
