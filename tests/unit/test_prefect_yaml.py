"""Every deployment in prefect.yaml points at a real flow and passes it valid parameters."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml
from prefect import Flow

ROOT = Path(__file__).resolve().parents[2]


def test_deployments_resolve_to_flows_with_valid_parameters() -> None:
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert config["deployments"], "prefect.yaml defines no deployment"
    for deployment in config["deployments"]:
        path, name = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, name)
        assert isinstance(flow, Flow), deployment["entrypoint"]
        flow.validate_parameters(deployment.get("parameters") or {})
        assert deployment["work_pool"]["name"] == "local-process"
