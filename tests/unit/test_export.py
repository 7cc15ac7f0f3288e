"""ONNX conversion and the parity gate, per model family, without a tracking server."""

from __future__ import annotations

import pandas as pd
import pytest
from sklearn.ensemble import RandomForestRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from mlops.settings import Settings
from serving.model import open_session
from tasks.export import ExportConfig, Parity, check_parity, measure_latency
from tasks.onnx_convert import ExportError, to_onnx
from tasks.train import ModelFamily, build_pipeline, split

FEATURES = list(Settings().feature_columns)


@pytest.fixture(scope="module")
def frame(batches: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(batches, ignore_index=True)


def fit(model: Pipeline, frame: pd.DataFrame) -> tuple[Pipeline, pd.DataFrame, float]:
    x_train, y_train, x_holdout, _ = split(frame, FEATURES, "target", 0.2)
    model.fit(x_train, y_train)
    return model, x_holdout, float(y_train.max() - y_train.min())


@pytest.mark.parametrize("family", list(ModelFamily))
def test_every_family_passes_the_default_parity_gate(family: ModelFamily, frame: pd.DataFrame) -> None:
    model, x_holdout, target_range = fit(build_pipeline(family, 42), frame)
    inference = open_session(to_onnx(model, len(FEATURES)).SerializeToString())
    assert inference.get_inputs()[0].type == "tensor(double)"
    parity = check_parity(inference, model, x_holdout, target_range, ExportConfig().parity_tolerance)
    assert parity.passed, parity.summary
    assert parity.rows == len(x_holdout) and parity.tolerance == pytest.approx(1e-5 * target_range)


@pytest.mark.parametrize("family", list(ModelFamily))
def test_the_same_model_exports_to_the_same_bytes(family: ModelFamily, frame: pd.DataFrame) -> None:
    model, _, _ = fit(build_pipeline(family, 42), frame)
    first, second = (to_onnx(model, len(FEATURES)).SerializeToString() for _ in range(2))
    assert first == second  # the sha256 keys image reuse and the immutable version tag


def test_trees_behind_a_scaler_keep_the_preprocessing_in_double(frame: pd.DataFrame) -> None:
    pipeline = Pipeline([("scale", StandardScaler()), ("model", RandomForestRegressor(50, random_state=0))])
    model, x_holdout, target_range = fit(pipeline, frame)
    onnx_model = to_onnx(model, len(FEATURES))
    casts = [node for node in onnx_model.graph.node if node.op_type == "Cast"]
    assert casts, "trees take float32: the graph casts after the double-precision scaler"
    parity = check_parity(
        open_session(onnx_model.SerializeToString()), model, x_holdout, target_range, ExportConfig().parity_tolerance
    )
    assert parity.passed, parity.summary


def test_a_tolerance_tighter_than_float32_trees_fails_the_gate(frame: pd.DataFrame) -> None:
    model, x_holdout, target_range = fit(build_pipeline(ModelFamily.RANDOM_FOREST, 42), frame)
    parity = check_parity(
        open_session(to_onnx(model, len(FEATURES)).SerializeToString()), model, x_holdout, target_range, 1e-12
    )
    assert not parity.passed
    assert "parity FAILED" in parity.summary and "holdout rows" in parity.summary


def test_nan_error_never_passes() -> None:
    assert not Parity(float("nan"), 1.0, 10.0, 0).passed


def test_a_model_without_a_converter_gives_a_clear_error() -> None:
    class Custom:
        def predict(self, x: object) -> None:
            return None

    with pytest.raises(ExportError, match="skl2onnx cannot convert Custom"):
        to_onnx(Custom(), 3)


def test_latency_figures_cover_both_engines_and_every_size(frame: pd.DataFrame) -> None:
    model, _, _ = fit(build_pipeline(ModelFamily.RIDGE, 42), frame)
    figures = measure_latency(
        open_session(to_onnx(model, len(FEATURES)).SerializeToString()), model, frame[FEATURES], [1, 50], 0.01
    )
    assert set(figures) == {"sklearn.1", "onnx.1", "sklearn.50", "onnx.50"}
    assert all(value > 0 for value in figures.values())


def test_latency_batch_sizes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        ExportConfig(latency_batch_sizes=[1, 0])
