"""Models trained elsewhere, registered under the diabetes spec beside a trained champion (real MLflow servers,
Prefect's harness): a pipeline fitted outside and saved with joblib (by `mlops register` as a user runs it), an
MLflow model logged on a second tracking server, an ONNX file converted outside (a scikit-learn MLP); each
checked, compared and registered with where it came from, the ONNX one released behind the endpoint with a
canary. Every refusal registers nothing."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from cli.stack import down
from flows.register import RegisterParameters, register_flow
from flows.release import ReleaseParameters, release_flow
from mlflow_server import MlflowServerConfig
from mlops.settings import PROJECT_ROOT, Settings
from tasks.endpoint_admin import endpoint_url
from tasks.outside import PickleSource, SourceError, trusting_pickles
from tasks.rollout import RolloutConfig
from tasks.sample_data import client_records, diabetes_frame
from tasks.serving_bundle import fetch_bundle
from tasks.tracking import client
from tasks.train import trusted_types
from tests.integration.conftest import endpoint_traffic, model_home

FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


@pytest.fixture(scope="module")
def diabetes(
    tmp_path_factory: pytest.TempPathFactory, mlflow_config: MlflowServerConfig, prefect_harness: None
) -> Iterator[Settings]:
    """A diabetes model with a trained champion (version 1) on its four accepted batches."""
    with model_home(tmp_path_factory, mlflow_config.url, "outside") as settings:
        yield settings


def table() -> tuple[pd.DataFrame, pd.Series]:
    frame = diabetes_frame()
    return frame[FEATURES], frame["target"]


def versions(settings: Settings) -> list[str]:
    found = client(settings.tracking_uri).search_model_versions(f"name = '{settings.model_name}'")
    return sorted(version.version for version in found)


def register(settings: Settings, source: Any, **options: Any) -> Any:
    return register_flow(RegisterParameters(model=settings.model_name, source=str(source), **options))


def test_a_pipeline_fitted_on_a_laptop_is_registered_by_mlops_register(diabetes: Settings, tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    x, y = table()
    forest = Pipeline([("scale", StandardScaler()), ("model", RandomForestRegressor(n_estimators=60, random_state=0))])
    path = tmp_path / "forest.joblib"
    joblib.dump(forest.fit(x, y), path)
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "register", str(path), "--reason", "the laptop's forest"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "is a pickle: loading it runs the code it holds" in done.stderr
    tracker = client(diabetes.tracking_uri)
    version = tracker.get_model_version_by_alias(diabetes.model_name, "challenger")
    tags = version.tags
    assert tags["trained_outside"] == "true" and tags["source_uri"] == str(path)
    assert tags["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert tags["registered_by"] == getpass.getuser() and tags["registration_reason"] == "the laptop's forest"
    assert tags["onnx_parity"] == "passed" and tags["model_family"] == "RandomForestRegressor"
    assert tags["validation_status"] == "passed" and "forced" not in tags
    compared = json.loads(tags["metrics_vs_champion"])
    assert compared["better"] and compared["champion_version"] == "1"
    with_bundle = fetch_bundle(
        diabetes.tracking_uri, f"models:/{diabetes.model_name}/{version.version}", tmp_path / "b"
    )
    assert with_bundle[1].family == "RandomForestRegressor"


def test_an_mlflow_model_from_another_tracking_server_is_registered(
    diabetes: Settings, own_mlflow: MlflowServerConfig
) -> None:
    import mlflow

    x, y = table()
    model = HistGradientBoostingRegressor(max_iter=50, random_state=0).fit(x, y)
    elsewhere = mlflow.MlflowClient(own_mlflow.url)
    run = elsewhere.create_run(elsewhere.create_experiment("laptop"))
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(own_mlflow.url)
    try:
        with mlflow.start_run(run_id=run.info.run_id):
            mlflow.sklearn.log_model(model, name="model", skops_trusted_types=trusted_types(model))
    finally:
        mlflow.set_tracking_uri(previous)
    uri = f"runs:/{run.info.run_id}/model"
    outcome = register(diabetes, uri, source_tracking_uri=own_mlflow.url, force=True, reason="their HGB, compared live")
    assert outcome.status == "registered", outcome.message
    tags = client(diabetes.tracking_uri).get_model_version(diabetes.model_name, outcome.version).tags
    assert tags["source_uri"] == uri and tags["source_flavour"] == "mlflow.sklearn"
    assert tags["model_family"] == "HistGradientBoostingRegressor" and tags["onnx_parity"] == "passed"


def mlp_onnx(path: Path) -> Any:
    """A scikit-learn MLP converted outside the project: one float32 matrix input ``X``, output ``variable``."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    x, y = table()
    model = Pipeline(
        [("scale", StandardScaler()), ("mlp", MLPRegressor(hidden_layer_sizes=(32,), max_iter=800, random_state=0))]
    )
    model.fit(x.to_numpy(), y)
    graph = convert_sklearn(model, initial_types=[("X", FloatTensorType([None, len(FEATURES)]))])
    path.write_bytes(graph.SerializeToString())
    return model


def test_an_onnx_file_made_outside_is_registered_and_released_behind_the_endpoint_with_a_canary(
    diabetes: Settings, tmp_path: Path
) -> None:
    mlp = mlp_onnx(tmp_path / "mlp.onnx")
    x, _ = table()
    expected = x.head(20).assign(prediction=mlp.predict(x.head(20).to_numpy().astype(np.float32)))
    expected.to_csv(tmp_path / "expected.csv", index=False)
    outcome = register(
        diabetes, tmp_path / "mlp.onnx", expected=str(tmp_path / "expected.csv"), force=True, reason="the MLP team"
    )
    assert outcome.status == "registered" and outcome.alias == "challenger", outcome.message
    tags = client(diabetes.tracking_uri).get_model_version(diabetes.model_name, outcome.version).tags
    assert tags["model_family"] == "onnx:skl2onnx" and tags["forced"].endswith(": the MLP team")

    settings = diabetes
    quick = RolloutConfig(steps=[25, 100], bake_seconds=1.5, min_requests=10, p99_slack_ms=50.0)
    records = client_records(x.head(40))
    try:
        champion = client(settings.tracking_uri).get_model_version_by_alias(settings.model_name, "champion").version
        release_flow(ReleaseParameters(version=champion, image="never", rollout=quick))
        with endpoint_traffic(settings, records) as load:
            released = release_flow(
                ReleaseParameters(version="challenger", image="never", rollout=quick, compare_predictions=False)
            )
        assert released.rollout == "promoted", released.message
        assert load.result.server_errors == 0 and load.result.connection_errors == 0, load.result.errors[:3]
        answer = httpx.post(f"{endpoint_url(settings)}/invocations", json={"dataframe_records": records[:5]})
        assert answer.status_code == 200, answer.text
        wanted = mlp.predict(x.head(5).to_numpy().astype(np.float32))
        assert np.abs(np.array(answer.json()["predictions"]) - wanted).max() < 1e-3
    finally:
        down(settings)


def unknown_op_graph(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Mystery", ["X"], ["variable"], domain="com.example")
    graph = helper.make_graph(
        [node],
        "mystery",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, len(FEATURES)])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    path.write_bytes(model.SerializeToString())
    assert onnx.load(str(path)).graph.node[0].op_type == "Mystery"


def refusals(tmp: Path) -> dict[str, tuple[Path, str]]:
    x, y = table()
    (tmp / "garbage.joblib").write_bytes(b"not a pickle at all")
    other = x.rename(columns={"bmi": "body mass index"})
    joblib.dump(RandomForestRegressor(n_estimators=5).fit(other, y), tmp / "other-columns.joblib")
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y > y.median()), tmp / "classifier.joblib")
    joblib.dump({"weights": [1.0, 2.0]}, tmp / "not-an-estimator.joblib")
    unknown_op_graph(tmp / "mystery.onnx")
    return {
        "does not load": (tmp / "garbage.joblib", r"garbage.joblib does not load: \w+"),
        "other columns": (tmp / "other-columns.joblib", r"\['body mass index'\] are not the spec's features"),
        "a classifier": (tmp / "classifier.joblib", r"is a classifier \(classes \['False', 'True'\]\).*regression"),
        "not an estimator": (tmp / "not-an-estimator.joblib", r"holds a dict, not a fitted estimator"),
        "unknown ops": (tmp / "mystery.onnx", r"onnxruntime cannot run .*mystery.onnx"),
    }


@pytest.mark.parametrize("case", ["does not load", "other columns", "a classifier", "not an estimator", "unknown ops"])
def test_a_bad_source_is_refused_in_one_line_and_the_registry_stays_as_it_was(
    diabetes: Settings, tmp_path: Path, case: str
) -> None:
    path, message = refusals(tmp_path)[case]
    before = versions(diabetes)
    aliases = client(diabetes.tracking_uri).get_registered_model(diabetes.model_name).aliases
    with trusting_pickles(), pytest.raises(SourceError, match=message) as refused:
        register(diabetes, path, reason="a try")
    assert len(str(refused.value).splitlines()) == 1 and len(str(refused.value)) < 400
    assert versions(diabetes) == before
    assert client(diabetes.tracking_uri).get_registered_model(diabetes.model_name).aliases == aliases


def test_a_pickle_is_never_loaded_by_the_flow_itself(diabetes: Settings, tmp_path: Path) -> None:
    x, y = table()
    joblib.dump(RandomForestRegressor(n_estimators=5).fit(x, y), tmp_path / "model.pkl")
    with pytest.raises(PickleSource, match=r"is a pickle, and loading one runs its code: register it with `mlops"):
        register(diabetes, tmp_path / "model.pkl")


def test_a_model_that_is_not_better_is_not_registered_without_force(diabetes: Settings, tmp_path: Path) -> None:
    x, y = table()
    mean = Pipeline([("model", HistGradientBoostingRegressor(max_iter=1, learning_rate=0.01))]).fit(x, y)
    joblib.dump(mean, tmp_path / "weak.joblib")
    before = versions(diabetes)
    with trusting_pickles():
        outcome = register(diabetes, tmp_path / "weak.joblib")
    assert outcome.status == "kept" and "--force --reason" in outcome.message and "rmse" in outcome.message
    assert versions(diabetes) == before
    with pytest.raises(ValueError, match="force needs a reason"):
        register(diabetes, tmp_path / "weak.joblib", force=True)


def test_mlflow_model_folders_in_boosting_flavours_are_registered_and_a_pickled_one_only_by_mlops_register(
    diabetes: Settings, tmp_path: Path
) -> None:
    import mlflow.lightgbm
    import mlflow.sklearn
    import mlflow.xgboost
    from lightgbm import LGBMRegressor
    from xgboost import XGBRegressor

    x, y = table()
    mlflow.xgboost.save_model(XGBRegressor(n_estimators=40, max_depth=3).fit(x, y), str(tmp_path / "xgb"))
    outcome = register(diabetes, tmp_path / "xgb", force=True, reason="their XGBoost")
    assert outcome.status == "registered", outcome.message
    tags = client(diabetes.tracking_uri).get_model_version(diabetes.model_name, outcome.version).tags
    assert tags["source_flavour"] == "mlflow.xgboost" and tags["model_family"] == "XGBRegressor"
    assert tags["onnx_parity"] == "passed"

    mlflow.lightgbm.save_model(LGBMRegressor(n_estimators=20, verbose=-1).fit(x, y), str(tmp_path / "lgbm"))
    outcome = register(diabetes, tmp_path / "lgbm", force=True, reason="their LightGBM")  # skops, our allow-list
    assert outcome.status == "registered", outcome.message

    forest = RandomForestRegressor(n_estimators=5).fit(x, y)
    mlflow.sklearn.save_model(forest, str(tmp_path / "pickled"), serialization_format="cloudpickle")
    with pytest.raises(PickleSource, match="is a pickle, and loading one runs its code"):
        register(diabetes, tmp_path / "pickled", force=True, reason="their forest")
