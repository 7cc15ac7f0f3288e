"""Every deployment in prefect.yaml, and each model's own written from its spec, points at a real flow and
passes it valid parameters."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from prefect import Flow

from deployments.model_deployments import ModelDeploymentError, model_deployments, write_deployment_file
from mlops.settings import Settings
from mlops.spec import load_spec
from tests.conftest import SHIPPED_SPECS, write_spec

ROOT = Path(__file__).resolve().parents[2]


def flow_of(deployment: dict) -> Flow:
    path, name = deployment["entrypoint"].split(":")
    flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)
    assert isinstance(flow, Flow), deployment["entrypoint"]
    return flow


@pytest.mark.parametrize("file", ["prefect.yaml", "deployments/prefect.team.yaml"])
def test_deployments_resolve_to_flows_with_valid_parameters(file: str) -> None:
    config = yaml.safe_load((ROOT / file).read_text())
    assert config["deployments"], f"{file} defines no deployment"
    pool = "local-process" if file == "prefect.yaml" else "mlops-kubernetes"
    for deployment in config["deployments"]:
        flow_of(deployment).validate_parameters(deployment.get("parameters") or {})
        assert deployment["work_pool"]["name"] == pool
        if pool == "local-process":  # each flow run is a fork of the worker's warm interpreter
            assert deployment["work_pool"]["job_variables"]["command"] == "python -m deployments.warm_runs run"


def test_every_flow_has_a_deployment_and_the_automations_name_real_ones() -> None:
    from deployments.automations import RELEASE, TRAIN

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = {f"{flow_of(deployment).name}/{deployment['name']}": deployment for deployment in config["deployments"]}
    shared = {"train/triggered", "release/challenger", "monitor/all-models", "landing/check", "batch-score/on-demand"}
    assert shared <= set(names)
    assert {TRAIN, RELEASE} <= set(names)
    # one training at a time; another model's (or a duplicate) waits its turn instead of being lost
    assert names[TRAIN]["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    # what runs by itself for every model: the landing check; the rest is scheduled per model
    assert [name for name, deployment in names.items() if deployment.get("schedules")] == ["landing/check"]


@pytest.mark.parametrize("file", ["prefect.yaml", "deployments/prefect.team.yaml"])
def test_each_model_gets_its_own_scheduled_deployments_from_its_spec(file: str, tmp_path: Path) -> None:
    project = yaml.safe_load((ROOT / file).read_text())
    nightly = write_spec(
        tmp_path, "nightly", schedules={"train": "30 1 * * *", "monitor": None, "timezone": "Europe/Paris"}
    )
    specs = [load_spec("diabetes", SHIPPED_SPECS), load_spec("nightly", nightly.parent)]
    written = {f"{flow_of(d).name}/{d['name']}": d for d in model_deployments(project, specs)}
    assert set(written) == {"train/diabetes", "monitor-model/diabetes", "train/nightly", "monitor-model/nightly"}
    for deployment in written.values():
        flow_of(deployment).validate_parameters(deployment["parameters"])
    assert written["train/diabetes"]["parameters"] == {"params": {"model": "diabetes"}}
    assert written["monitor-model/nightly"]["parameters"] == {"params": {"model_name": "nightly"}}
    assert written["train/diabetes"]["schedules"] == [{"cron": "0 3 * * 1", "timezone": "UTC"}]
    assert written["monitor-model/diabetes"]["schedules"] == [{"cron": "5 * * * *", "timezone": "UTC"}]
    assert written["train/nightly"]["schedules"] == [{"cron": "30 1 * * *", "timezone": "Europe/Paris"}]
    assert written["monitor-model/nightly"]["schedules"] == []
    shared_train = next(d for d in project["deployments"] if d["entrypoint"] == "flows/train.py:train_flow")
    assert written["train/nightly"]["work_pool"] == shared_train["work_pool"]
    assert written["train/nightly"]["concurrency_limit"] == shared_train["concurrency_limit"]


def test_a_model_named_like_a_shared_deployment_is_refused(tmp_path: Path) -> None:
    project = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    clash = write_spec(tmp_path, "triggered")
    with pytest.raises(ModelDeploymentError, match="'triggered' is named like a shared deployment"):
        model_deployments(project, [load_spec("triggered", clash.parent)])


def test_the_written_file_holds_the_shared_and_each_models_deployments(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    written = yaml.safe_load(write_deployment_file(isolated_settings, output=tmp_path / "all.yaml").read_text())
    names = [d["name"] for d in written["deployments"]]
    shared = [d["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]]
    assert names == [*shared, isolated_settings.model_name, isolated_settings.model_name]
