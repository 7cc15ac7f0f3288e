"""Canary rollouts for real: router and model server processes, MLflow registry, steady load on loopback.

A good challenger is promoted under load with no 5xx and no connection error; bad ones (wrong
predictions, 5xx answers, slow answers) are rolled back at the first step, and only requests the
router sent to the canary during that step see the effect. Registry alias and traffic agree at
the end either way, and a rollout that crashed midway is finished by re-running the flow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import mlflow
import pandas as pd
import pytest

from cli.traffic import BackgroundTraffic, TrafficResult
from flows.release import ReleaseParameters, release_flow
from mlflow_server import MlflowServerConfig
from mlops.process import free_port
from mlops.settings import Settings
from serving.bundle import ModelMetadata
from tasks.endpoint_admin import EndpointClient, start_endpoint, stop_endpoint
from tasks.export import known_answer
from tasks.ingest import accepted_frame
from tasks.onnx_convert import MATRIX_INPUT, OUTPUT_NAME, numeric_columns, to_onnx
from tasks.registry import CHALLENGER, CHAMPION
from tasks.rollout import RolloutConfig, Window, bake_step, deployment_name, reconcile_endpoint, start_canary
from tasks.targets import ProcessTarget
from tests.integration.conftest import model_events, model_home, register_bundle
from tests.integration.hostile import Fuzz

# p99_slack_ms 50: a scheduling hiccup on a busy 2-core machine must not fail a good canary; the slow
# canary below adds 120 ms, far beyond it.
FAST = RolloutConfig(steps=[10, 50, 100], bake_seconds=2.0, min_requests=20, p99_slack_ms=50.0)


@dataclass(frozen=True)
class Loop:
    settings: Settings
    frame: pd.DataFrame
    endpoint: EndpointClient
    mlflow: MlflowServerConfig


@pytest.fixture(scope="module")
def loop(
    tmp_path_factory: pytest.TempPathFactory, own_mlflow: MlflowServerConfig, prefect_harness: None
) -> Iterator[Loop]:
    """Champion v1 (first batch) and challenger v2 (all batches), trained by the real flow; the endpoint up.
    The module's MLflow server is its own: a test stops it and starts it again."""
    trainings = (([0], CHAMPION), ([1, 2, 3], CHALLENGER))
    port = str(free_port())
    with model_home(tmp_path_factory, own_mlflow.url, "rolled", trainings, MLOPS_ENDPOINT_PORT=port) as settings:
        frame = accepted_frame(settings.data_for())
        assert frame is not None
        endpoint = start_endpoint(settings)
        try:
            outcome = release_flow(ReleaseParameters(version=CHAMPION, image="never", rollout=FAST))
            assert outcome.rollout == "nothing_to_do"  # but the champion now serves behind the endpoint
            yield Loop(settings, frame, endpoint, own_mlflow)
        finally:
            target = ProcessTarget(settings.tracking_uri, settings.resolved_home)
            for deployment in endpoint.table().deployments:
                target.stop(deployment.name)
            stop_endpoint(settings)


def tracker(loop: Loop) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(loop.settings.tracking_uri)


def alias(loop: Loop, name: str) -> str | None:
    aliases = tracker(loop).get_registered_model(loop.settings.model_name).aliases
    return aliases.get(name)


def traffic(loop: Loop) -> BackgroundTraffic:
    rows = loop.frame[list(loop.settings.spec().feature_names)].to_numpy().tolist()
    return BackgroundTraffic(
        f"{loop.endpoint.url}/invocations",
        lambda rng: {"instances": [rows[rng.randrange(len(rows))]]},
        max_seconds=120,
        concurrency=4,
    )


def dep(loop: Loop, version: object) -> str:
    """The name of the loop model's deployment of ``version``."""
    return deployment_name(loop.settings.model_name, str(version))


def assert_consistent(loop: Loop, champion: str) -> None:
    """Registry and traffic agree: the champion's deployment alone takes all traffic."""
    assert alias(loop, CHAMPION) == champion
    table = loop.endpoint.table()
    assert [(d.name, d.weight) for d in table.deployments] == [(dep(loop, champion), 100)]


def register_copy(loop: Loop, model: Any = None, shift: float = 0.0) -> str:
    """A new version holding the challenger's model (or ``model``), predictions shifted by ``shift``."""
    settings = loop.settings
    features = list(settings.spec().feature_names)
    if model is None:
        model = mlflow.sklearn.load_model(f"models:/{settings.model_name}/2")
    if shift:
        from sklearn.linear_model import Ridge

        x = loop.frame[features]
        model = Ridge().fit(x, model.predict(x) + shift)
    onnx_bytes = to_onnx(model, numeric_columns(features)).model.SerializeToString()
    sample = loop.frame[features].head(8)
    metadata = ModelMetadata(
        settings.model_name, "unregistered", tuple(features), MATRIX_INPUT, OUTPUT_NAME, "",
        example=known_answer(model, sample, 1e-3),
    )  # fmt: skip
    return register_bundle(settings, onnx_bytes, metadata)


def rollout_events(loop: Loop, since: datetime, expected: set[str]) -> list[str]:
    """Names of the ``rollout.*`` events on the model's resource since ``since``, once ``expected`` all arrived."""
    return [event.event for event in model_events(loop.settings.model_name, since, "rollout.", expected)]


def only_canary_in_first_step(result: TrafficResult, outcome: Any, canary: str) -> None:
    assert outcome.rollout == "rolled_back" and len(outcome.steps) == 1, outcome.steps
    assert result.connection_errors == 0, result.errors[:3]
    served_by_canary = result.deployments[canary]
    assert 0 < served_by_canary <= 0.25 * result.requests  # its 10 % share during step 1, nothing more
    assert result.server_errors <= served_by_canary


@pytest.mark.parametrize(
    ("fault", "why"),
    [
        ({"shift": 150.0}, "canary predictions differ from stable"),
        # 30 %, evenly spread: the 2 requests of the canary's known-answer check pass, traffic then fails
        ({"env": {"MLOPS_SERVING_FAULT_ERROR_SHARE": "0.3"}}, "canary error rate"),
        ({"env": {"MLOPS_SERVING_FAULT_DELAY_MS": "120"}}, "canary p99"),
    ],
    ids=["wrong-predictions", "answers-5xx", "slow"],
)
def test_a_bad_challenger_is_rolled_back_at_the_first_step(loop: Loop, fault: dict[str, Any], why: str) -> None:
    champion = alias(loop, CHAMPION)
    assert champion is not None
    version = register_copy(loop, shift=fault.get("shift", 0.0))
    config = FAST.model_copy(update={"canary_env": fault.get("env", {})})
    started = datetime.now(UTC)
    with traffic(loop) as load:
        outcome = release_flow(ReleaseParameters(version=CHALLENGER, image="never", rollout=config))
        after_rollback = load.result.deployments[dep(loop, version)]
        time.sleep(1.0)  # traffic goes on: the rolled-back canary must answer nobody any more
    assert load.result.deployments[dep(loop, version)] == after_rollback
    only_canary_in_first_step(load.result, outcome, dep(loop, version))
    names = rollout_events(loop, started, {"rollout.started", "rollout.step", "rollout.rolled_back"})
    assert sorted(names) == ["rollout.rolled_back", "rollout.started", "rollout.step"]
    assert why in outcome.message
    if "env" in fault and "ERROR" in next(iter(fault["env"])):
        assert load.result.server_errors > 0  # users routed to the canary did see its 500s
    else:
        assert load.result.server_errors == 0
    assert_consistent(loop, champion)
    assert alias(loop, CHALLENGER) is None
    tags = tracker(loop).get_model_version(loop.settings.model_name, version).tags
    assert tags["rollout"] == "rolled_back" and why in tags["rollout_reason"]
    figures = json.loads(tags["rollout_figures"])
    assert figures["canary"]["requests"] > 0 and figures["stable"]["requests"] > 0
    assert not (loop.settings.resolved_home / "deployments" / f"deployment-{dep(loop, version)}.pid").exists()


def test_a_canary_failing_its_known_answer_check_is_rolled_back_before_any_traffic(loop: Loop) -> None:
    champion = alias(loop, CHAMPION)
    version = register_copy(loop)
    config = FAST.model_copy(update={"canary_env": {"MLOPS_SERVING_FAULT_ERROR_SHARE": "1.0"}})
    with traffic(loop) as load:
        outcome = release_flow(ReleaseParameters(version=CHALLENGER, image="never", rollout=config))
    assert (outcome.rollout, outcome.steps) == ("rolled_back", [])
    assert "before any traffic" in outcome.message and "injected fault" in outcome.message
    assert set(load.result.deployments) == {dep(loop, champion)} and load.result.server_errors == 0
    assert_consistent(loop, str(champion))
    assert alias(loop, CHALLENGER) is None
    assert tracker(loop).get_model_version(loop.settings.model_name, version).tags["rollout"] == "rolled_back"


def test_a_wrong_challenger_in_its_shadow_phase_never_answers_a_user(loop: Loop) -> None:
    champion = alias(loop, CHAMPION)
    version = register_copy(loop, shift=150.0)
    config = FAST.model_copy(update={"shadow_seconds": 2.0})
    with traffic(loop) as load:
        outcome = release_flow(ReleaseParameters(version=CHALLENGER, image="never", rollout=config))
    assert outcome.rollout == "rolled_back" and [s["canary weight %"] for s in outcome.steps] == [0]
    assert "canary predictions differ from stable" in outcome.message
    assert int(outcome.steps[0]["canary req / err / p99"].split(" / ")[0]) >= FAST.min_requests  # it was asked
    assert set(load.result.deployments) == {dep(loop, champion)} and load.result.server_errors == 0  # never answered
    assert_consistent(loop, str(champion))
    assert loop.endpoint.table().mirror == 0.0
    assert tracker(loop).get_model_version(loop.settings.model_name, version).tags["rollout"] == "rolled_back"


def fuzz(loop: Loop) -> Fuzz:
    """Hostile requests (nesting, numbers, header floods) to the router and to every deployment behind it."""
    features = list(loop.settings.spec().feature_names)
    row = loop.frame[features].iloc[0].astype(float).tolist()

    def targets() -> list[str]:
        return [loop.endpoint.url, *(deployment.url for deployment in loop.endpoint.table().deployments)]

    return Fuzz(targets, row, features, loop.settings.model_name, seed=7, pause=0.02)


def test_a_good_challenger_is_promoted_under_load_and_fuzz_without_a_failed_request(loop: Loop) -> None:
    """Steady users and a fuzz client at once: the canary is promoted, no user sees an error, and no hostile
    request gets a 5xx from the router or any deployment."""
    previous = alias(loop, CHAMPION)
    tracker(loop).set_registered_model_alias(loop.settings.model_name, CHALLENGER, "2")
    config = FAST.model_copy(update={"shadow_seconds": 2.0})  # a shadow phase first, then the steps
    started = datetime.now(UTC)
    with traffic(loop) as load, fuzz(loop) as hostile:
        outcome = release_flow(ReleaseParameters(version=CHALLENGER, image="never", rollout=config))
    result = load.result
    assert outcome.rollout == "promoted", outcome.message
    assert hostile.result.unexpected == [], hostile.result.unexpected[:10]
    assert all(hostile.result.count(kind) > 20 for kind in ("nesting", "number", "header")), hostile.result.outcomes
    assert [(step["canary weight %"], step["verdict"]) for step in outcome.steps] == [
        (0, "pass"), (10, "pass"), (50, "pass"), (100, "pass")
    ]  # fmt: skip
    assert result.requests > 300
    assert result.server_errors == 0 and result.connection_errors == 0, result.errors[:5]
    assert result.deployments[dep(loop, previous)] > 0 and result.deployments[dep(loop, "2")] > 0
    assert_consistent(loop, "2")
    assert alias(loop, CHALLENGER) is None
    version = tracker(loop).get_model_version(loop.settings.model_name, "2")
    assert version.tags["rollout"] == "promoted" and version.tags["promoted_by"] == "rollout"
    assert ProcessTarget(loop.settings.tracking_uri, loop.settings.resolved_home).running() == [dep(loop, "2")]
    names = rollout_events(loop, started, {"rollout.started", "rollout.step", "rollout.promoted"})
    assert sorted(names) == sorted(["rollout.started", *["rollout.step"] * 4, "rollout.promoted"])


def test_mlflow_down_at_promotion_leaves_the_champion_taking_all_traffic(loop: Loop) -> None:
    """The canary passed every step and takes all traffic, then the tracking server stops: the error says so,
    and the champion alias and the deployment taking all traffic still agree (the old champion) while it is
    down, when it is back, and after the release is run again."""
    from mlflow_server import start_mlflow, stop_mlflow
    from tasks.registry import PromotionError
    from tasks.rollout import promote_canary

    settings = loop.settings
    champion = alias(loop, CHAMPION)
    assert champion is not None
    version = register_copy(loop)
    target = ProcessTarget(settings.tracking_uri, settings.resolved_home)
    reconcile_endpoint(loop.endpoint, target, settings.tracking_uri, settings.model_name)
    canary = start_canary(loop.endpoint, target, settings.tracking_uri, settings.model_name, version, champion)
    with traffic(loop):
        report, _ = bake_step(loop.endpoint, canary, 1, 100, Window(0, 0, 0.0, 0.0), FAST)
    assert report.passed and {d.name: d.weight for d in loop.endpoint.table().deployments}[dep(loop, version)] == 100
    assert stop_mlflow(loop.mlflow)
    try:
        with traffic(loop) as load:
            with pytest.raises(PromotionError, match=r"not promoted: tracking server unreachable.*stays the champion"):
                promote_canary(loop.endpoint, target, settings.tracking_uri, canary, [report])
            table = loop.endpoint.table()  # while MLflow is still down
    finally:
        start_mlflow(loop.mlflow)
    assert [(d.name, d.weight) for d in table.deployments] == [(dep(loop, champion), 100)]
    assert load.result.server_errors == 0 and load.result.connection_errors == 0, load.result.errors[:3]
    assert_consistent(loop, champion)  # at once when MLflow is back: nothing to repair
    assert dep(loop, version) not in target.running()

    with traffic(loop) as load:
        outcome = release_flow(ReleaseParameters(version=CHALLENGER, image="never", rollout=FAST))
    assert outcome.rollout == "promoted", outcome.message
    assert load.result.server_errors == 0 and load.result.connection_errors == 0
    assert_consistent(loop, version)


def test_a_rollout_that_crashed_midway_is_finished_by_running_the_flow_again(loop: Loop) -> None:
    settings = loop.settings
    champion = alias(loop, CHAMPION)
    assert champion is not None
    version = register_copy(loop)  # the champion's model again: a harmless challenger
    target = ProcessTarget(settings.tracking_uri, settings.resolved_home)
    # The first half of a rollout, then the "crash": the flow never got further.
    reconcile_endpoint(loop.endpoint, target, settings.tracking_uri, settings.model_name)
    canary = start_canary(loop.endpoint, target, settings.tracking_uri, settings.model_name, version, champion)
    with traffic(loop):
        bake_step(loop.endpoint, canary, 1, 25, Window(0, 0, 0.0, 0.0), FAST)
    assert {d.name: d.weight for d in loop.endpoint.table().deployments} == {
        dep(loop, champion): 75,
        dep(loop, version): 25,
    }

    with traffic(loop) as load:
        outcome = release_flow(ReleaseParameters(version=CHALLENGER, image="never", rollout=FAST))
    assert outcome.rollout == "promoted", outcome.message
    assert load.result.server_errors == 0 and load.result.connection_errors == 0
    assert_consistent(loop, version)
