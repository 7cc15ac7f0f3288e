"""Two regression models on one stack (one MLflow, one Prefect, one home): each trains, registers and is
released behind its own endpoint; the scheduled monitoring judges each on its own traffic (drift on
one is reported on that one only); releasing or rolling back one never touches the other's
processes; ``mlops down`` stops both endpoints and every deployment."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd
import pytest

from cli.stack import down
from flows.monitor_all import MonitorAllParameters, monitor_all_flow
from flows.release import ReleaseParameters, release_flow
from flows.train import TrainParameters, train_flow
from mlflow_server import MlflowServerConfig
from mlops.process import free_port
from mlops.settings import Settings, get_settings
from mlops.spec import TrainingSpec
from tasks.endpoint_admin import endpoint_url, running_endpoints
from tasks.ingest import accepted_frame
from tasks.rollout import RolloutConfig, deployment_name
from tasks.sample_data import drifted, land_batches
from tasks.targets import ProcessTarget
from tests.conftest import write_spec
from tests.integration.conftest import model_events
from tests.integration.factories import SECOND_REGRESSION, cancer_regression_frame

WEAK = TrainingSpec(families=["ridge"], grid={"model__alpha": [10_000.0]})
QUICK = RolloutConfig(steps=[50, 100], bake_seconds=1.0, min_requests=0)


@dataclass(frozen=True)
class Stack:
    settings: Settings
    first: str  # diabetes columns, the default model (MLOPS_MODEL_NAME)
    second: str  # breast-cancer measurements (tests.integration.factories.SECOND_REGRESSION)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, mlflow_config: MlflowServerConfig, prefect_harness: None
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("two-models")
    tag = uuid.uuid4().hex[:6]
    first, second = f"diabetes_{tag}", f"cancer_{tag}"
    write_spec(root / "models", first)
    write_spec(root / "models", second, **SECOND_REGRESSION)
    env = {
        "MLOPS_HOME": str(root / "home"),
        "MLOPS_MODELS_DIR": str(root / "models"),
        "MLOPS_MODEL_NAME": first,
        "MLOPS_ENDPOINT_PORT": str(free_port()),
        "MLFLOW_TRACKING_URI": mlflow_config.url,
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        get_settings.cache_clear()
        settings = get_settings()
        for model in (first, second):  # v1 champion over-regularised, v2 challenger as the spec says
            land_batches(
                settings.landing_for(model), [0, 1, 2, 3], spec=None if model == first else settings.spec(model)
            )
            for training, alias in ((WEAK, "champion"), (None, "challenger")):
                outcome = train_flow(TrainParameters(model=model, training=training))
                assert outcome.alias == alias, outcome.message
        try:
            yield Stack(settings, first, second)
        finally:
            down(settings)
            get_settings.cache_clear()


def answer(settings: Settings, model: str, row: dict[str, float]) -> httpx.Response:
    return httpx.post(f"{endpoint_url(settings, model)}/invocations", json={"dataframe_records": [row]}, timeout=10)


DIABETES_ROW = {
    "age": 50.0,
    "sex": 1.0,
    "bmi": 25.0,
    "bp": 90.0,
    "s1": 180.0,
    "s2": 100.0,
    "s3": 50.0,
    "s4": 4.0,
    "s5": 4.5,
    "s6": 90.0,
}


def second_row() -> dict[str, float]:
    return dict(cancer_regression_frame().drop(columns=["mean area"]).iloc[0].to_dict())


def test_each_model_is_released_behind_its_own_endpoint(stack: Stack) -> None:
    settings = stack.settings
    for model in (stack.first, stack.second):
        outcome = release_flow(ReleaseParameters(version="champion", model_name=model, image="never", rollout=QUICK))
        assert outcome.rollout == "nothing_to_do", outcome.message
    assert endpoint_url(settings, stack.first) == f"http://127.0.0.1:{settings.endpoint_port}"
    assert endpoint_url(settings, stack.second) != endpoint_url(settings, stack.first)
    first, second = answer(settings, stack.first, DIABETES_ROW), answer(settings, stack.second, second_row())
    assert first.status_code == 200 and first.headers["x-mlops-deployment"] == deployment_name(stack.first, "1")
    assert second.status_code == 200 and second.headers["x-mlops-deployment"] == deployment_name(stack.second, "1")
    assert answer(settings, stack.second, DIABETES_ROW).status_code == 400  # the other model's columns: refused
    assert set(running_endpoints(settings)) == {stack.first, stack.second}


def serve_rows(settings: Settings, model: str, rows: pd.DataFrame) -> None:
    """Score ``rows`` through the model's endpoint, ten per request."""
    columns = list(settings.spec(model).feature_names)
    with httpx.Client(base_url=endpoint_url(settings, model) or "", timeout=10) as client:
        for start in range(0, len(rows), 10):
            chunk = rows.iloc[start : start + 10][columns].to_dict(orient="split")
            body = {"dataframe_split": {"columns": chunk["columns"], "data": chunk["data"]}}
            assert client.post("/invocations", json=body).status_code == 200


def test_the_scheduled_monitoring_judges_each_model_on_its_own_traffic(stack: Stack) -> None:
    settings = stack.settings
    since = datetime.now(UTC)
    started = time.time()
    first, second = (accepted_frame(settings.data_for(model)) for model in (stack.first, stack.second))
    assert first is not None and second is not None
    # 1000 rows each: on 200 rows drawn from the training table itself, the normed Wasserstein distance
    # of most breast-cancer columns is over 0.1 by chance (it falls under 0.06 from 1000 rows)
    serve_rows(settings, stack.first, drifted(first.sample(1000, replace=True, random_state=3)))
    serve_rows(settings, stack.second, second.sample(1000, replace=True, random_state=3))
    time.sleep(0.5)  # the collector writes every 0.1 s
    ended = time.time()
    result = monitor_all_flow(
        MonitorAllParameters(window_minutes=(ended - started) / 60, window_end=datetime.fromtimestamp(ended, UTC))
    )
    judged = {outcome.model_name: outcome for outcome in result.outcomes}
    assert set(judged) == {stack.first, stack.second} and result.without_champion == []
    assert judged[stack.first].rows == judged[stack.second].rows == 1000
    assert judged[stack.first].drift["drifted"] is True, judged[stack.first].message
    assert judged[stack.second].drift["drifted"] is False, judged[stack.second].message
    assert [event.event for event in model_events(stack.first, since, "drift.", {"drift.detected"})] == [
        "drift.detected"
    ]
    assert model_events(stack.second, since, "drift.", set(), timeout=2) == []


def test_rolling_back_one_model_leaves_the_other_serving_and_promoting_it_leaves_the_first(stack: Stack) -> None:
    settings = stack.settings
    target = ProcessTarget(settings.tracking_uri, settings.resolved_home)
    faulty = QUICK.model_copy(update={"canary_env": {"MLOPS_SERVING_FAULT_ERROR_SHARE": "1.0"}})
    rolled_back = release_flow(
        ReleaseParameters(version="challenger", model_name=stack.first, image="never", rollout=faulty)
    )
    assert rolled_back.rollout == "rolled_back", rolled_back.message
    assert deployment_name(stack.second, "1") in target.running()
    assert answer(settings, stack.second, second_row()).headers["x-mlops-deployment"] == deployment_name(
        stack.second, "1"
    )

    promoted = release_flow(
        ReleaseParameters(version="challenger", model_name=stack.second, image="never", rollout=QUICK)
    )
    assert promoted.rollout == "promoted", promoted.message
    assert target.running() == sorted([deployment_name(stack.first, "1"), deployment_name(stack.second, "2")])
    assert answer(settings, stack.first, DIABETES_ROW).headers["x-mlops-deployment"] == deployment_name(
        stack.first, "1"
    )
    assert answer(settings, stack.second, second_row()).headers["x-mlops-deployment"] == deployment_name(
        stack.second, "2"
    )


def test_mlops_down_stops_every_model_of_the_home(stack: Stack) -> None:
    settings = stack.settings
    urls = [endpoint_url(settings, model) for model in (stack.first, stack.second)]
    down(settings)
    assert ProcessTarget(settings.tracking_uri, settings.resolved_home).running() == []
    assert running_endpoints(settings) == []
    for url in urls:
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/metrics", timeout=2)
    assert not list(Path(settings.resolved_home, "deployments").glob("*.pid"))
