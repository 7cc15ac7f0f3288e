"""Start, reuse and stop the local process worker, and register this project's deployments with it.

The worker (``prefect worker start --pool local-process --type process``) creates the pool when it
does not exist, runs each flow run as a subprocess in the project folder, and answers a health
check on ``MLOPS_WORKER_PORT``. It runs under the warm-run server (:mod:`deployments.warm_runs`),
so each flow run is a fork of an interpreter that has imported the flows' libraries already. It
inherits this environment, so flow runs see the same MLflow, home and model settings.
``deploy_all`` is ``prefect deploy --all`` from the project root (forked from the same warm
interpreter when it runs).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deployments.model_deployments import write_deployment_file
from deployments.warm_runs import SOCKET_ENV
from mlops.process import ManagedServer, start, stop
from mlops.settings import Settings

POOL = "local-process"
WARM_PREFECT = [sys.executable, "-m", "deployments.warm_runs", "run", "-m", "prefect"]
PROJECT = Path(__file__).resolve().parents[1]


def _prefect() -> str:
    return str(Path(sys.executable).parent / "prefect")


def warm_socket(settings: Settings) -> Path:
    """Where the worker's warm-run server listens: short (a Unix socket path has at most 107 bytes)
    and one per home."""
    home = hashlib.sha256(str(settings.resolved_home).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"mlops-warm-{home}.sock"


def prefect_worker(settings: Settings) -> ManagedServer:
    """The managed-process description of the local process worker."""
    return ManagedServer(
        name="prefect-worker",
        command=[
            sys.executable,
            "-m",
            "deployments.warm_runs",
            "serve",
            "--socket",
            str(warm_socket(settings)),
            "--after",  # the worker asks the API for runs once it answers; the imports go ahead meanwhile
            f"{settings.prefect_url}/health",
            "--",
            *[_prefect(), "worker", "start", "--pool", POOL, "--type", "process", "--with-healthcheck"],
        ],
        host="127.0.0.1",
        port=settings.worker_port,
        health_path="/health",
        is_expected=lambda body: '"OK"' in body,
        state_dir=settings.logs_dir,
        env={
            "PREFECT_API_URL": settings.prefect_url,
            "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
            "PREFECT_WORKER_WEBSERVER_PORT": str(settings.worker_port),
            "PREFECT_WORKER_QUERY_SECONDS": str(settings.worker_query_seconds),
        },
        cwd=PROJECT,
    )


class WorkerError(RuntimeError):
    """The worker answers but its work pool never appeared."""


def start_worker(settings: Settings, timeout: float = 120.0) -> bool:
    """Start the process worker, or reuse the one answering on its port; returns once its pool exists (the worker
    creates it, with the process pool's job template, just after its health check answers)."""
    started = start(prefect_worker(settings), timeout=timeout)
    wait_for_pool(settings, timeout)
    return started


def wait_for_pool(settings: Settings, timeout: float) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout
    with temporary_settings(updates={PREFECT_API_URL: settings.prefect_url}), get_client(sync_client=True) as prefect:
        while True:
            try:
                prefect.read_work_pool(POOL)
                return
            except ObjectNotFound:
                if time.monotonic() > deadline:
                    raise WorkerError(
                        f"the worker answers but its pool {POOL} did not appear within {timeout:.0f} s; "
                        f"see {settings.logs_dir}/prefect-worker.log"
                    ) from None
                time.sleep(0.2)


def stop_worker(settings: Settings) -> bool:
    """Stop the worker this project started (by its pid file)."""
    return stop(prefect_worker(settings))


class DeployError(RuntimeError):
    """``prefect deploy --all`` failed."""


def deploy_all(settings: Settings, timeout: float = 300.0) -> str:
    """Register every deployment of ``prefect.yaml`` and each model's own (train/<model>,
    monitor-model/<model>) on the server in ``settings``; returns the CLI's output."""
    project_file = write_deployment_file(settings)
    # Forked from the worker's warm interpreter when it runs (seconds, not the CLI's 15-20 s of
    # imports); `python -m prefect` otherwise.
    env = {**os.environ, "PREFECT_API_URL": settings.prefect_url, SOCKET_ENV: str(warm_socket(settings))}
    result = subprocess.run(
        [*WARM_PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", str(project_file)],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise DeployError(
            f"prefect deploy --all failed ({result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}"
        )
    return result.stdout
