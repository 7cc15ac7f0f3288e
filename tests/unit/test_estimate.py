"""The label-free performance estimate (CBPE) of a real scikit-learn classifier on a mixed-type table: it
tracks the realised accuracy of covariate-shifted windows within its band, binary and multiclass."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import make_column_transformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from tasks.estimate import Calibration, estimate


def table(classes: int, rows: int = 24_000, seed: int = 3) -> tuple[pd.DataFrame, np.ndarray]:
    """Numbers (one with gaps, carrying little signal) and a text column, labels drawn from a multinomial
    logit of them: a model family that can be right about its own uncertainty everywhere, which is what
    the estimate assumes (see the note on misspecified models in tasks.estimate)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (rows, 5))
    site = rng.choice(["east", "west", "north"], rows)
    weights = rng.normal(0, 1.2, (5, classes))
    weights[4] *= 0.1
    effect = {name: rng.normal(0, 1, classes) for name in ("east", "west", "north")}
    logits = x @ weights + np.stack([effect[name] for name in site])
    chances = np.exp(logits - logits.max(axis=1, keepdims=True))
    chances /= chances.sum(axis=1, keepdims=True)
    y = (rng.random((rows, 1)) > np.cumsum(chances, axis=1)).sum(axis=1)
    frame = pd.DataFrame(x, columns=[f"m{i}" for i in range(5)])
    frame.loc[rng.random(rows) < 0.1, "m4"] = np.nan
    frame["site"] = site
    return frame, np.asarray([f"class {label}" for label in y], dtype=object)


def fitted(frame: pd.DataFrame, labels: np.ndarray) -> object:
    numbers = [c for c in frame.columns if c != "site"]
    prepare = make_column_transformer(
        (SimpleImputer(strategy="median"), numbers), (OneHotEncoder(handle_unknown="ignore"), ["site"])
    )
    return make_pipeline(prepare, LogisticRegression(max_iter=1000)).fit(frame, labels)


@pytest.mark.parametrize("classes", [2, 3], ids=["binary", "multiclass"])
def test_the_estimate_tracks_realised_accuracy_on_shifted_windows_within_its_band(classes: int) -> None:
    frame, labels = table(classes)
    train, holdout, live = slice(0, 10_000), slice(10_000, 12_000), slice(12_000, None)
    model = fitted(frame.iloc[train], labels[train])
    calibration = Calibration.fit(list(model.classes_), model.predict_proba(frame.iloc[holdout]), labels[holdout])
    calibration = Calibration.from_json(calibration.to_json())  # as the monitor reads it from MLflow
    pool, truth = frame.iloc[live].reset_index(drop=True), labels[live]
    windows = {  # covariate shift: the inputs move, the rule from inputs to label stays
        "like training": np.arange(len(pool)) < 3000,
        "m0 high": pool["m0"].to_numpy() > 1.0,
        "m1 low, east only": (pool["m1"].to_numpy() < -0.5) & (pool["site"] == "east").to_numpy(),
        "near zero": np.abs(pool[["m0", "m1", "m2"]].to_numpy()).max(axis=1) < 0.6,
        "gaps only": pool["m4"].isna().to_numpy(),
    }
    seen = {}
    for name, rows in windows.items():
        window, answer = pool[rows], truth[rows]
        predicted = model.predict(window)
        found = estimate(calibration, model.predict_proba(window), predicted)
        realised = float(np.mean(predicted == answer))
        assert found.lower <= realised <= found.upper, (name, realised, found)
        assert found.upper - found.lower < 0.12, (name, found)
        if classes == 2:
            auc = roc_auc_score(answer == model.classes_[1], model.predict_proba(window)[:, 1])
            assert found.roc_auc == pytest.approx(auc, abs=0.05), name
        seen[name] = (realised, found.accuracy)
    # the estimate moves with the realised accuracy across the windows
    realised_order = sorted(seen, key=lambda name: seen[name][0])
    estimated_order = sorted(seen, key=lambda name: seen[name][1])
    assert realised_order[0] == estimated_order[0] and realised_order[-1] == estimated_order[-1], seen


def test_bad_input_is_refused_with_the_reason() -> None:
    calibration = Calibration(("a", "b"), [0.0, 1.0], [0.0, 1.0], 100)
    with pytest.raises(ValueError, match="the calibration has 2 classes"):
        estimate(calibration, np.ones((3, 3)) / 3, ["a", "b", "a"])
    with pytest.raises(ValueError, match="no scored rows"):
        estimate(calibration, np.ones((0, 2)), [])
