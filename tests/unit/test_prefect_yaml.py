"""Every deployment in prefect.yaml points at a real flow and passes it valid parameters."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from prefect import Flow

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("file", ["prefect.yaml", "deployments/prefect.team.yaml"])
def test_deployments_resolve_to_flows_with_valid_parameters(file: str) -> None:
    config = yaml.safe_load((ROOT / file).read_text())
    assert config["deployments"], f"{file} defines no deployment"
    pool = "local-process" if file == "prefect.yaml" else "mlops-kubernetes"
    for deployment in config["deployments"]:
        path, name = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, name)
        assert isinstance(flow, Flow), deployment["entrypoint"]
        flow.validate_parameters(deployment.get("parameters") or {})
        assert deployment["work_pool"]["name"] == pool


def test_every_flow_has_a_deployment_and_the_automations_name_real_ones() -> None:
    from deployments.automations import RELEASE, TRAIN

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = {}
    for deployment in config["deployments"]:
        path, name = deployment["entrypoint"].split(":")
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)
        names[f"{flow.name}/{deployment['name']}"] = deployment
    assert {"train/weekly", "release/challenger", "monitor/hourly", "landing/check", "batch-score/on-demand"} <= set(
        names
    )
    assert {TRAIN, RELEASE} <= set(names)
    # one training at a time; another model's (or a duplicate) waits its turn instead of being lost
    assert names[TRAIN]["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    assert [s["cron"] for s in names["monitor/hourly"]["schedules"]] == ["5 * * * *"]
