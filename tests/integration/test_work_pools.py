"""The team's work pool job templates are accepted by a Prefect server and keep our defaults."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", ["kubernetes", "docker"])
def test_the_job_template_creates_a_work_pool(kind: str, prefect_harness: None) -> None:
    template = json.loads((ROOT / "deployments" / "work_pools" / f"{kind}.json").read_text())
    name = f"mlops-{kind}-{uuid.uuid4().hex[:6]}"
    with get_client(sync_client=True) as prefect:
        prefect.create_work_pool(WorkPoolCreate(name=name, type=kind, base_job_template=template))
        pool = prefect.read_work_pool(name)
    variables = pool.base_job_template["variables"]["properties"]
    assert variables["image"]["default"] == "ghcr.io/your-org/mlops-flows:latest"
    assert variables["env"]["default"]["MLFLOW_TRACKING_URI"].startswith("http://mlflow")
    assert "{{ image }}" in json.dumps(pool.base_job_template["job_configuration"])  # the image is a variable
