"""How long a flow run takes to start on the local process worker: cold (``python -m prefect.engine``,
Prefect's default) against warm (a fork of the worker's warm interpreter, ``deployments.warm_runs``),
side by side on one Prefect server and one worker, alternating, for a light flow (the landing check)
and the heaviest (the monitor, which imports GX and Evidently).

Not a test: prints a table. Usage: ``uv run python bench/flow_start.py [--runs 5]``.
Each figure is from the run's creation (what an automation does) to its Running and Completed states.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlops.process import free_port  # noqa: E402

COMMANDS = {"cold": "python -m prefect.engine", "warm": "python -m deployments.warm_runs run"}
FLOWS = {
    "landing check": "flows/landing.py:landing_flow",
    "monitor (no champion: fails at once)": "flows/monitor.py:monitor_flow",
}


def seconds(run: Any) -> tuple[float, float]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect:
        states = prefect.read_flow_run_states(run.id)
    running = next(s.timestamp for s in states if s.name == "Running")
    final = states[-1].timestamp
    return (running - run.created).total_seconds(), (final - run.created).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        os.environ.update(
            {
                "MLOPS_HOME": home,
                "MLOPS_MLFLOW_PORT": str(free_port()),
                "MLOPS_PREFECT_PORT": str(free_port()),
                "MLOPS_WORKER_PORT": str(free_port()),
            }
        )
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        from mlops.settings import Settings

        settings = Settings()
        os.environ["PREFECT_API_URL"] = settings.prefect_url
        from prefect import Flow
        from prefect.deployments import run_deployment

        from deployments.prefect_server import start_prefect, stop_prefect
        from deployments.prefect_worker import POOL, start_worker, stop_worker
        from mlflow_server import MlflowServerConfig, start_mlflow, stop_mlflow

        start_mlflow(MlflowServerConfig.from_settings(settings))
        start_prefect(settings)
        try:
            start_worker(settings)  # returns once the worker's pool exists
            rows: dict[tuple[str, str], list[tuple[float, float]]] = {}
            for label, entrypoint in FLOWS.items():
                flow: Any = Flow.from_source(str(ROOT), entrypoint)
                deployment = f"{flow.name}/bench"
                flow.deploy("bench", work_pool_name=POOL, print_next_steps=False, build=False, push=False)
                for _ in range(args.runs + 1):  # the first of each is a warm-up (the server imports meanwhile)
                    for mode, command in COMMANDS.items():
                        run = run_deployment(
                            deployment, job_variables={"command": command}, timeout=300, poll_interval=0.2
                        )
                        rows.setdefault((label, mode), []).append(seconds(run))
        finally:
            stop_worker(settings)
            stop_prefect(settings)
            stop_mlflow(MlflowServerConfig.from_settings(settings))
    print(f"{'flow':<36} {'start':<5} {'to Running s (median)':>22} {'to end s (median)':>18}")
    for (label, mode), figures in rows.items():
        kept = figures[1:]
        print(
            f"{label:<36} {mode:<5} {statistics.median(f[0] for f in kept):>22.2f}"
            f" {statistics.median(f[1] for f in kept):>18.2f}"
        )


if __name__ == "__main__":
    main()
