"""The tracking server stopped in the middle of a training run and started again, for real.

The run fails within seconds with "tracking server unreachable" (MLflow's client retries are bounded), its
MLflow run is left RUNNING because nobody can tell the stopped server otherwise, and the next training run
once the server is back marks it FAILED and trains on the batches the failed run had accepted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest

from flows.train import TrainParameters, train_flow
from mlflow_server import MlflowServerConfig, start_mlflow, stop_mlflow
from mlops.settings import Settings
from mlops.spec import TrainingSpec
from tasks.sample_data import land_batches
from tasks.tracking import TrackingServerUnavailable
from tests.integration.conftest import model_home

SLOW = TrainParameters(training=TrainingSpec(pipeline="tests.integration.factories:many_trees"))


@pytest.fixture(scope="module")
def home(
    tmp_path_factory: pytest.TempPathFactory, own_mlflow: MlflowServerConfig, prefect_harness: None
) -> Iterator[Settings]:
    with model_home(tmp_path_factory, own_mlflow.url, "restart", trainings=()) as settings:
        yield settings


def open_run(settings: Settings, timeout: float = 120.0) -> str:
    """The id of the model's training run once one is RUNNING on the server."""
    tracker = mlflow.MlflowClient(settings.tracking_uri)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        experiment = tracker.get_experiment_by_name(settings.spec().experiment)
        if experiment is not None:
            runs = tracker.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
            if runs:
                return str(runs[0].info.run_id)
        time.sleep(0.05)
    raise AssertionError(f"no training run opened within {timeout} s")


def test_mlflow_stopped_mid_training_fails_plainly_and_the_next_run_ends_the_open_run(
    home: Settings, own_mlflow: MlflowServerConfig
) -> None:
    land_batches(home.landing_for(), [0, 1, 2, 3])
    ended: dict[str, Any] = {}

    def train() -> None:
        try:
            ended["outcome"] = train_flow(SLOW)
        except Exception as error:  # the failure under test, inspected below
            ended["error"] = error
        ended["at"] = time.monotonic()

    training = threading.Thread(target=train, name="training")
    training.start()
    run_id = open_run(home)
    assert stop_mlflow(own_mlflow)
    stopped = time.monotonic()
    try:
        training.join(timeout=300)  # unbounded retries once held a run for over 5 minutes
        assert not training.is_alive(), "the training run is still retrying against a stopped tracking server"
    finally:
        start_mlflow(own_mlflow)
    error = ended.get("error")
    assert isinstance(error, TrackingServerUnavailable), ended
    assert f"training of {home.model_name} stopped: tracking server unreachable" in str(error)
    print(f"training failed {ended['at'] - stopped:.1f} s after the tracking server stopped")  # the note's figure

    tracker = mlflow.MlflowClient(home.tracking_uri)
    assert tracker.get_run(run_id).info.status == "RUNNING"  # the stopped server could not be told
    assert list(Path(home.landing_for()).iterdir()) == []  # the batches were accepted before the failure
    outcome = train_flow(TrainParameters())  # the server is back: the next training run
    assert outcome.status == "registered" and outcome.alias == "champion", outcome.message
    abandoned = tracker.get_run(run_id)
    assert abandoned.info.status == "FAILED"
    assert "ended by the next training run" in abandoned.data.tags["ended_by"]
    assert outcome.run_id != run_id and tracker.get_run(outcome.run_id).info.status == "FINISHED"
