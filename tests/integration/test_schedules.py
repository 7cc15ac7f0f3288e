"""The local Prefect server (``mlops up``'s, scheduler on) turns a deployment's cron schedule into Scheduled
runs. Under SQLAlchemy 2.1 it did not: Prefect 3.8's bulk insert of scheduled runs failed on every tick
("Can't evaluate bulk DML statement"), so no schedule of prefect.yaml or of a model spec ever ran."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from deployments.prefect_server import start_prefect, stop_prefect
from mlops.process import free_port
from mlops.settings import Settings
from tests.conftest import own_prefect_env


def test_a_cron_schedule_makes_scheduled_runs_on_the_local_server(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with pytest.MonkeyPatch.context() as patch:
        environment = {
            **own_prefect_env(tmp_path),
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "true",  # what `mlops up` runs
            "MLOPS_HOME": str(tmp_path / "home"),
            "MLOPS_PREFECT_PORT": str(free_port()),
        }
        for key, value in environment.items():
            patch.setenv(key, value)
        settings = Settings()
        try:  # Prefect read its settings when it was imported: the API URL is given to it, not to the environment
            assert start_prefect(settings), "a server already answered on the new port: not the one this test starts"
            with temporary_settings({PREFECT_API_URL: settings.prefect_url}), get_client(sync_client=True) as prefect:
                flow_id = prefect.create_flow_from_name("landing")
                every_five = DeploymentScheduleCreate(schedule=CronSchedule(cron="*/5 * * * *", timezone="UTC"))
                deployment = prefect.create_deployment(flow_id, "check", schedules=[every_five])
                only_it = DeploymentFilter(id=DeploymentFilterId(any_=[deployment]))
                # the scheduler looks at deployments changed in the last seconds every 5 s (its main loop: 60 s)
                deadline, runs = time.monotonic() + 60, []
                while not runs and time.monotonic() < deadline:
                    time.sleep(1)
                    runs = prefect.read_flow_runs(deployment_filter=only_it)
            assert runs, f"no scheduled run within 60 s; see {settings.logs_dir / 'prefect.log'}"
            assert {run.state_name for run in runs} == {"Scheduled"}
            assert all(run.expected_start_time.minute % 5 == 0 for run in runs if run.expected_start_time)
        finally:
            stop_prefect(settings)
