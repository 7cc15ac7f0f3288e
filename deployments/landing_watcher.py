"""Start, reuse and stop the local landing watcher (``mlops watch-landing``) beside the worker.

It lists every model's landing folder every ``MLOPS_WATCH_SECONDS`` (default 0.5 s) and emits
``data.landed`` once per new batch, so the ``train-on-new-data`` automation starts a training
seconds after data lands instead of at the next scheduled check (``landing/check``, every five
minutes, stays as the fallback). It answers a health check on ``MLOPS_WATCHER_PORT``.
"""

from __future__ import annotations

import sys

from deployments.prefect_worker import PROJECT
from mlops.process import ManagedServer, start, stop
from mlops.settings import Settings

HEALTH = "landing-watcher OK"


def landing_watcher(settings: Settings) -> ManagedServer:
    """The managed-process description of the landing watcher."""
    return ManagedServer(
        name="landing-watcher",
        command=[
            sys.executable,
            "-m",
            "cli.main",
            "watch-landing",
            "--every",
            str(settings.watch_seconds),
            "--health-port",
            str(settings.watcher_port),
        ],
        host="127.0.0.1",
        port=settings.watcher_port,
        health_path="/health",
        is_expected=lambda body: body == HEALTH,
        state_dir=settings.logs_dir,
        env={"PREFECT_API_URL": settings.prefect_url},
        cwd=PROJECT,
    )


def start_watcher(settings: Settings, timeout: float = 60.0) -> bool:
    """Start the landing watcher, or reuse the one answering on its port."""
    return start(landing_watcher(settings), timeout=timeout)


def stop_watcher(settings: Settings) -> bool:
    """Stop the landing watcher this project started (by its pid file)."""
    return stop(landing_watcher(settings))
