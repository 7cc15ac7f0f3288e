"""Gradient-boosting models through the loop (real MLflow server, Prefect's harness, the real server process):
the XGBoost example (models/progression.yaml: categories, gaps, ids, an ignored note) trained by the flow,
registered with its lineage, served by both protocols with the answers XGBoost gives, monitored, batch-scored
and released behind its endpoint with a canary under load; a team's LightGBM pipeline and a bare CatBoost model
with string labels trained by the flow and registered."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest

from cli.stack import down
from flows.release import ReleaseParameters, release_flow
from flows.train import TrainParameters, train_flow
from mlflow_server import MlflowServerConfig
from mlops.settings import PROJECT_ROOT, Settings
from mlops.spec import TrainingSpec
from serving.collector import requests_dir
from serving.model import open_session
from tasks.features import typed_features
from tasks.ingest import accepted_frame
from tasks.rollout import RolloutConfig
from tasks.sample_data import client_records, land_batches
from tasks.serving_bundle import fetch_bundle
from tasks.tracking import client
from tasks.train import TrainingSet
from tests.conftest import serving_process
from tests.integration.conftest import endpoint_traffic, model_home, monitor_window, send_with_ids


@pytest.fixture(scope="module")
def progression(
    tmp_path_factory: pytest.TempPathFactory, mlflow_config: MlflowServerConfig, prefect_harness: None
) -> Iterator[Settings]:
    """The XGBoost example (a copy of models/progression.yaml) trained once on its four batches."""
    with model_home(tmp_path_factory, mlflow_config.url, "progression", base="progression") as settings:
        yield settings


def test_the_xgboost_example_registers_with_its_metrics_lineage_and_parity(progression: Settings) -> None:
    tracker = client(progression.tracking_uri)
    version = tracker.get_model_version_by_alias(progression.model_name, "champion")
    run = tracker.get_run(version.run_id)
    assert run.data.params["family"] == "xgboost" and run.data.params["task"] == "regression"
    assert run.data.metrics["r2"] > 0.3
    for tag in ("dataset_digest", "git_commit", "onnx_sha256", "training_key"):
        assert version.tags.get(tag), tag
    assert version.tags["onnx_parity"] == "passed"

    spec = progression.spec()
    frame = accepted_frame(progression.data_for())
    assert frame is not None and frame["clinic"].isna().any() and frame["bmi"].isna().any()
    _, y_train, x_holdout, _ = TrainingSet(frame, spec).split()
    model = mlflow.sklearn.load_model(f"models:/{progression.model_name}@champion")  # skops, XGBoost inside
    with tempfile.TemporaryDirectory() as scratch:
        model_file, metadata = fetch_bundle(
            progression.tracking_uri, f"models:/{progression.model_name}@champion", Path(scratch)
        )
        session = open_session(str(model_file))
    inputs = {item["column"]: item for item in metadata.inputs}
    assert inputs["sex"]["type"] == "string" and inputs["sex"]["categories"] == ["1", "2"]
    feeds = {
        inputs[column]["input"]: x_holdout[column]
        .to_numpy(np.float64 if inputs[column]["type"] == "double" else object)
        .reshape(-1, 1)
        for column in spec.feature_names
    }
    [values] = session.run(None, feeds)
    allowed = 1e-5 * float(y_train.max() - y_train.min())
    assert np.abs(values.ravel() - model.predict(x_holdout)).max() <= allowed


@dataclass(frozen=True)
class Served:
    settings: Settings
    url: str
    rows: pd.DataFrame  # whole rows as a clinic has them: the record id, strings, gaps, the note
    values: np.ndarray  # XGBoost's answers


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, progression: Settings) -> Iterator[Served]:
    settings = progression
    spec = settings.spec()
    frame = accepted_frame(settings.data_for())
    assert frame is not None
    rows = pd.concat([frame.head(20), frame[frame["clinic"].isna()].head(4), frame[frame["bmi"].isna()].head(4)])
    rows = rows[list(spec.feature_names)].reset_index(drop=True)
    model = mlflow.sklearn.load_model(f"models:/{settings.model_name}/1")
    scratch = tmp_path_factory.mktemp("boosted-bundle")
    fetch_bundle(settings.tracking_uri, f"models:/{settings.model_name}/1", scratch / "bundle")
    collect_dir = requests_dir(settings.resolved_home, settings.model_name)
    with serving_process(scratch / "bundle", "--collect-dir", str(collect_dir)) as url:
        yield Served(settings, url, rows, np.asarray(model.predict(typed_features(rows, spec))))


def test_both_protocols_answer_raw_rows_as_xgboost_does(served: Served) -> None:
    records = client_records(served.rows)
    answer = httpx.post(f"{served.url}/invocations", json={"dataframe_records": records}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert np.abs(np.array(answer.json()["predictions"]) - served.values).max() <= 1e-3

    inputs = []
    for column in served.rows.columns:
        text = served.rows[column].dtype == object
        values = [record[column] for record in records]
        inputs.append({"name": column, "shape": [len(values)], "datatype": "BYTES" if text else "FP64", "data": values})
    answer = httpx.post(f"{served.url}/v2/models/{served.settings.model_name}/infer", json={"inputs": inputs})
    assert answer.status_code == 200, answer.text
    [output] = answer.json()["outputs"]
    assert np.abs(np.array(output["data"]) - served.values).max() <= 1e-3


def test_the_monitor_judges_the_boosted_model_from_its_collected_requests(served: Served) -> None:
    from flows.monitor import monitor_flow

    settings = served.settings
    frame = accepted_frame(settings.data_for())
    assert frame is not None
    started = time.time()
    rows = frame.sample(n=150, random_state=2)[settings.spec().feature_names]
    send_with_ids(f"{served.url}/invocations", ({"dataframe_records": [r]} for r in client_records(rows)))
    outcome = monitor_flow(monitor_window(started))
    assert outcome.status == "judged", outcome.message
    assert not outcome.drift["drifted"], outcome.drift
    assert outcome.drift["methods"]["clinic"] == "chisquare" and outcome.drift["methods"]["bmi"] == "ks"


def test_batch_scoring_answers_what_xgboost_answers_and_quarantines_bad_rows(served: Served, tmp_path: Path) -> None:
    from flows.batch_score import BatchScoreParameters, batch_score_flow
    from tasks.batch import REJECTED, read_scores

    source = served.rows.assign(record_id=[f"R{n}" for n in range(len(served.rows))])
    broken = source.head(1).copy()
    broken["bp"] = broken["bp"].astype(object)
    broken.loc[broken.index[0], "bp"] = "high"
    (tmp_path / "input").mkdir()
    source.to_csv(tmp_path / "input" / "records.csv", index=False)
    broken.to_csv(tmp_path / "input" / "late.csv", index=False)
    outcome = batch_score_flow(
        BatchScoreParameters(input=str(tmp_path / "input"), output=str(tmp_path / "out"), version="1", chunk_rows=10)
    )
    assert (outcome.scored, outcome.rejected) == (len(source), 1)
    scores = read_scores(tmp_path / "out")
    assert np.abs(scores["prediction"].to_numpy() - served.values).max() <= 1e-3
    assert scores["record_id"].tolist() == source["record_id"].tolist()
    rejected = pd.concat(pd.read_parquet(p) for p in (tmp_path / "out" / REJECTED).glob("*.parquet"))
    assert rejected["reason"].tolist() == ["bp is not a number"]

    done = subprocess.run(  # a batch row back to its origin, as a user asks
        [sys.executable, "-m", "cli.main", "trace", "records:3", "--batch-dir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_ROOT,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert (found["source"], found["version"], found["rows"][0]["record_id"]) == ("batch", "1", "R3")
    assert found["lineage"]["onnx_sha256"] and found["lineage"]["model_family"] == "xgboost"


def test_a_second_xgboost_version_is_promoted_through_a_canary_under_load(served: Served) -> None:
    settings = served.settings
    tracker = client(settings.tracking_uri)
    records = client_records(served.rows)
    quick = RolloutConfig(steps=[25, 100], bake_seconds=1.5, min_requests=10, p99_slack_ms=50.0)
    try:
        assert release_flow(ReleaseParameters(version="1", image="never", rollout=quick)).rollout == "nothing_to_do"
        first = tracker.get_model_version(settings.model_name, "1")
        second = tracker.create_model_version(
            settings.model_name,
            first.source,
            run_id=first.run_id,
            tags=first.tags,
            model_id=first.source.removeprefix("models:/"),
        )
        tracker.set_registered_model_alias(settings.model_name, "challenger", second.version)
        with endpoint_traffic(settings, records) as load:
            outcome = release_flow(ReleaseParameters(version="challenger", image="never", rollout=quick))
        assert outcome.rollout == "promoted", outcome.message
        assert [step["canary weight %"] for step in outcome.steps] == [25, 100]
        assert load.result.server_errors == 0 and load.result.connection_errors == 0, load.result.errors[:3]
        assert tracker.get_model_version_by_alias(settings.model_name, "champion").version == second.version
    finally:
        down(settings)


@pytest.mark.parametrize(
    ("factory", "preprocess"),
    [("lightgbm_classifier_pipeline", False), ("catboost_classifier_bare", True)],
    ids=["lightgbm-own-pipeline", "catboost-bare"],
)
def test_a_teams_boosted_classifier_with_string_labels_trains_and_registers_through_the_flow(
    tmp_path_factory: pytest.TempPathFactory,
    mlflow_config: MlflowServerConfig,
    prefect_harness: None,
    factory: str,
    preprocess: bool,
) -> None:
    with model_home(tmp_path_factory, mlflow_config.url, "boosted", base="tumours", trainings=()) as settings:
        land_batches(settings.landing_for(), [0, 1, 2, 3], spec=settings.spec())
        own = TrainingSpec(pipeline=f"tests.integration.factories:{factory}", preprocess=preprocess)
        outcome = train_flow(TrainParameters(training=own))
        assert outcome.alias == "champion", outcome.message
        tracker = client(settings.tracking_uri)
        version = tracker.get_model_version_by_alias(settings.model_name, "champion")
        assert version.tags["onnx_parity"] == "passed"
        run = tracker.get_run(version.run_id)
        assert run.data.params["classes"] == '["benign", "malignant"]' and run.data.metrics["roc_auc"] > 0.9
        model: Any = mlflow.sklearn.load_model(f"models:/{settings.model_name}@champion")
        frame = accepted_frame(settings.data_for())
        assert frame is not None
        assert set(model.predict(typed_features(frame.head(20), settings.spec()))) <= {"benign", "malignant"}
