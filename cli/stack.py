"""The embedded stack: MLflow and Prefect servers, the process worker, deployments, automations and
the landing watcher.

``up`` starts (or reuses) the servers, ``deploy`` the worker, ``prefect deploy --all``, the
automations and the landing watcher, ``down`` stops everything this project started (deployments and endpoint included).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mlops.settings import Settings


def up(settings: Settings) -> dict[str, str]:
    """Start (or reuse) the MLflow and Prefect servers side by side."""
    from deployments.prefect_server import start_prefect
    from mlflow_server import MlflowServerConfig, start_mlflow

    with ThreadPoolExecutor(max_workers=2) as pool:
        mlflow_started = pool.submit(start_mlflow, MlflowServerConfig.from_settings(settings))
        prefect_started = pool.submit(start_prefect, settings)
        states = {
            "mlflow": "started" if mlflow_started.result() else "already running",
            "prefect": "started" if prefect_started.result() else "already running",
        }
    print(f"MLflow  {states['mlflow']:>15}: {settings.tracking_uri}")
    print(f"Prefect {states['prefect']:>15}: {settings.prefect_url.removesuffix('/api')}")
    return states


def deploy(settings: Settings, release_parameters: dict[str, Any] | None, watch: bool = True) -> None:
    """Start (or reuse) the process worker, register prefect.yaml's deployments, apply the automations
    and (``watch``) start the landing watcher."""
    from deployments.automations import apply_loop_automations
    from deployments.landing_watcher import start_watcher
    from deployments.prefect_worker import POOL, deploy_all, start_worker

    started = start_worker(settings)
    print(f"Worker {'started' if started else 'answering'}: pool {POOL}, log {settings.logs_dir}")
    deploy_all(settings)
    print("Deployments registered from prefect.yaml (prefect deploy --all)")
    for name, what in apply_loop_automations(settings, release_parameters=release_parameters).items():
        print(f"automation {name}: {what}")
    if watch:  # after the automations: its first events have someone to act on them
        watching = start_watcher(settings)
        print(f"Landing watcher {'started' if watching else 'already running'}: every {settings.watch_seconds:g} s")


def down(settings: Settings) -> None:
    from deployments.landing_watcher import stop_watcher
    from deployments.prefect_server import stop_prefect
    from deployments.prefect_worker import stop_worker
    from mlflow_server import MlflowServerConfig, stop_mlflow
    from tasks.docker_engine import EngineUnavailable, connect
    from tasks.endpoint_admin import running_endpoints, stop_endpoint
    from tasks.router_container import router_containers, stop_router_container
    from tasks.targets import DockerTarget, ProcessTarget

    target = ProcessTarget(settings.tracking_uri, settings.resolved_home)
    for deployment in target.running():
        print(f"deployment {deployment}: {'stopped' if target.stop(deployment) else 'not running'}")
    try:
        engine = connect(timeout=10)
    except EngineUnavailable:
        pass  # no engine: no containers of ours either
    else:
        containers = DockerTarget(settings.tracking_uri, home=settings.resolved_home)
        for deployment in containers.running():
            print(f"container mlops-{deployment}: {'stopped' if containers.stop(deployment) else 'not running'}")
        for model in router_containers(engine, settings.resolved_home):
            stopped = stop_router_container(engine, model)
            print(f"Endpoint of {model} (container): {'stopped' if stopped else 'not running'}")
    for model in running_endpoints(settings) or [settings.model_name]:
        stopped = stop_endpoint(settings, model)
        print(f"Endpoint of {model}: {'stopped' if stopped else 'not running (nothing of ours to stop)'}")
    for name, stopped in (
        ("Landing watcher", stop_watcher(settings)),
        ("Worker", stop_worker(settings)),
        ("Prefect", stop_prefect(settings)),
        ("MLflow", stop_mlflow(MlflowServerConfig.from_settings(settings))),
    ):
        print(f"{name}: {'stopped' if stopped else 'not running (nothing of ours to stop)'}")
