"""The monitor flow on real served requests: a model server process collecting what it scored, the real
MLflow server holding the champion's training reference, Evidently, GX, and Prefect's events.

One window of training-like traffic is judged stable; one window with six shifted features is judged
drifted (``drift.detected`` with the columns), fails live-input validation, and — with labels that
arrive later for its request ids — degraded (``performance.degraded``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from flows.monitor import monitor_flow
from mlflow_server import MlflowServerConfig
from mlops.settings import Settings
from tasks.ingest import accepted_frame
from tasks.registry import CHAMPION
from tasks.sample_data import DRIFT_COLUMNS, drifted
from tasks.targets import ProcessTarget
from tests.integration.conftest import model_events, model_home, monitor_window, send_with_ids

SHIFTED = list(DRIFT_COLUMNS)  # 6 of 10 features: over Evidently's 0.5 share


@dataclass(frozen=True)
class Served:
    settings: Settings
    url: str
    frame: pd.DataFrame


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, mlflow_config: MlflowServerConfig, prefect_harness: None
) -> Iterator[Served]:
    with model_home(tmp_path_factory, mlflow_config.url, "watched", (([0, 1], CHAMPION),)) as settings:
        frame = accepted_frame(settings.data_for())
        assert frame is not None
        target = ProcessTarget(settings.tracking_uri, settings.resolved_home)
        url = target.start("v1", settings.model_name, "1")
        try:
            yield Served(settings, url, frame)
        finally:
            target.stop("v1")


def send(served: Served, rows: pd.DataFrame, per_request: int = 10) -> list[str]:
    """Score ``rows`` in requests of ``per_request`` rows with our own request ids; returns the ids."""
    matrix = rows[list(served.settings.spec().feature_names)].to_numpy().tolist()
    chunks = (matrix[start : start + per_request] for start in range(0, len(matrix), per_request))
    return send_with_ids(f"{served.url}/invocations", ({"instances": chunk} for chunk in chunks))


def test_training_like_traffic_is_judged_stable_and_recorded_in_mlflow(served: Served) -> None:
    settings = served.settings
    started = time.time()
    since = datetime.now(UTC)
    send(served, served.frame.sample(300, replace=True, random_state=1))
    outcome = monitor_flow(monitor_window(started))

    assert outcome.status == "judged" and outcome.rows == 300, outcome.message
    assert outcome.drift["drifted"] is False and outcome.drift["drifted_columns"] == []
    assert outcome.quality["success"], outcome.quality
    assert Path(outcome.report_file or "").read_text().lstrip().lower().startswith("<!doctype html")
    assert (settings.resolved_home / "reports" / settings.model_name / "drift-latest.html").is_file()
    client = mlflow.MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(f"{settings.spec().experiment}-monitoring")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id], f"tags.monitored_model = '{settings.model_name}'")
    assert run.data.tags["monitored_version"] == "1" and run.data.metrics["rows"] == 300
    assert {f"drift_score.{c}" for c in settings.spec().feature_names} <= set(run.data.metrics)
    reports = [item.path for item in client.list_artifacts(run.info.run_id, "drift")]
    assert f"drift/{Path(outcome.report_file or '').name}" in reports
    assert model_events(settings.model_name, since, "drift.", set(), timeout=2) == []


def test_shifted_traffic_emits_drift_and_late_labels_emit_degradation(served: Served) -> None:
    settings = served.settings
    started = time.time()
    since = datetime.now(UTC)
    rows = drifted(served.frame.sample(400, replace=True, random_state=2))
    ids = send(served, rows)
    # Labels arrive later, keyed by request id and row; these are far from every prediction.
    labels = pd.DataFrame(
        {
            "request_id": np.repeat(ids, 10),
            "row": np.tile(np.arange(10), len(ids)),
            settings.spec().target.column: 1000.0,
        }
    )
    folder = settings.resolved_home / "labels" / settings.model_name
    folder.mkdir(parents=True, exist_ok=True)
    labels.to_csv(folder / "labels-0001.csv", index=False)

    outcome = monitor_flow(monitor_window(started))

    assert outcome.drift["drifted"] is True, outcome.message
    assert set(outcome.drift["drifted_columns"]) == set(SHIFTED)
    assert set(SHIFTED) <= set(outcome.evidently_drifted)  # Evidently's report agrees on the shifted columns
    assert outcome.quality["success"] is False and "mean" in outcome.quality["reason"]
    assert outcome.performance["degraded"] is True and outcome.performance["labelled_rows"] == 400
    events = model_events(settings.model_name, since, "", {"drift.detected", "performance.degraded"})
    by_name = {event.event: event for event in events}
    assert set(by_name) == {"drift.detected", "performance.degraded"}
    payload = by_name["drift.detected"].payload
    assert set(payload["drifted_columns"]) == set(SHIFTED) and payload["version"] == "1"
    assert payload["drift_share"] == pytest.approx(0.6) and payload["rows"] == 400
    assert (
        by_name["performance.degraded"].payload["rmse"] > 10 * by_name["performance.degraded"].payload["baseline_rmse"]
    )


def test_a_window_with_too_few_rows_judges_nothing(served: Served) -> None:
    started = time.time()
    since = datetime.now(UTC)
    send(served, drifted(served.frame.head(20)))
    outcome = monitor_flow(monitor_window(started))
    assert outcome.status == "too-few-rows" and outcome.rows == 20 and "need 100" in outcome.message
    assert model_events(served.settings.model_name, since, "drift.", set(), timeout=2) == []
