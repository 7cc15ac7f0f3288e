"""Start, reuse and stop a local ``prefect server start`` (SQLite under ``<home>/prefect``), run through
:mod:`deployments.prefect_sqlite` so that its write transactions wait for SQLite's lock instead of failing.

For a team, point ``PREFECT_API_URL`` at a shared server (PostgreSQL-backed) or Prefect
Cloud instead and do not start one.
"""

from __future__ import annotations

import sys

from mlops.process import ManagedServer, start, stop
from mlops.settings import Settings


def prefect_server(settings: Settings) -> ManagedServer:
    """The managed-process description of the local Prefect server."""
    home = settings.resolved_home / "prefect"
    return ManagedServer(
        name="prefect",
        command=[
            sys.executable,
            "-m",
            "deployments.prefect_sqlite",
            "server",
            "start",
            "--host",
            settings.prefect_host,
            "--port",
            str(settings.prefect_port),
            "--analytics-off",
        ],
        host=settings.prefect_host,
        port=settings.prefect_port,
        health_path="/api/health",
        is_expected=lambda body: body.strip() == "true",
        state_dir=settings.logs_dir,
        env={
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_API_HOST": settings.prefect_host,
            "PREFECT_SERVER_API_PORT": str(settings.prefect_port),
            # Events reach the database (and `mlops demo`'s lines) within a second, not five.
            "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "1",
        },
    )


def start_prefect(settings: Settings, timeout: float = 120.0) -> bool:
    """Start the local Prefect server, or reuse the one already answering at its URL."""
    (settings.resolved_home / "prefect").mkdir(parents=True, exist_ok=True)
    return start(prefect_server(settings), timeout=timeout)


def stop_prefect(settings: Settings) -> bool:
    """Stop the Prefect server this project started (by its pid file)."""
    return stop(prefect_server(settings))
