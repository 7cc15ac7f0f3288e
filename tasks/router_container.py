"""A model's router as a container, for releases that run in containers themselves (the Docker pool).

A release running in a container cannot start the router as a process: the router would stop with the
run's container. With ``MLOPS_ENDPOINT_RUNTIME=docker`` the router is a detached container of the
serving image the release built (it holds the ``serving`` package): host network, restarted by the
engine unless stopped, its routing table in ``<home>/endpoint/containers/<model>/``. The canaries are
containers beside it (``DockerTarget``), so the whole endpoint outlives the run that set it up, and
the next release finds it by its URL, like a router process.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from mlops.process import ManagedServer, reusable
from tasks.targets import IMAGE_UID, container_user

ENTRYPOINT = ["/opt/serving/bin/python", "-m", "serving.router"]
STATE_FILE = "/state/routes.json"
ROLE = "router"


def container_name(model: str) -> str:
    return f"mlops-router-{model}"


def start_router_container(
    server: ManagedServer, model: str, image: str | None, home: Path, ready_timeout: float = 60.0
) -> bool:
    """Start ``server`` (the router's process description: URL, health check, token) as a container of
    ``image``, unless the expected router answers at its URL already.

    Returns:
        True if a container was started, False if a running router was reused.

    Raises:
        PortInUseError: Something else answers on the router's port.
        RuntimeError: No image to run it from, or the container did not become ready (with its log).
    """
    from docker.errors import NotFound

    from tasks.docker_engine import connect
    from tasks.smoke import SmokeTestError, wait_until_ready

    if reusable(server):
        return False
    if image is None:
        raise RuntimeError(
            f"the endpoint of {model} runs as a container (MLOPS_ENDPOINT_RUNTIME=docker) and no serving image "
            f"was given to run it from: release the version with its image (image auto or always)"
        )
    engine = connect()
    with contextlib.suppress(NotFound):  # a stopped or crashed router of an earlier run
        engine.containers.get(container_name(model)).remove(force=True)
    folder = home / "endpoint" / "containers" / model
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.getuid() == 0:  # the container runs as the image's own user (see container_user)
        os.chown(folder, IMAGE_UID, IMAGE_UID)
    arguments = ["--model", model, "--host", server.host, "--port", str(server.port), "--state-file", STATE_FILE]
    container = engine.containers.run(
        image,
        arguments,
        entrypoint=ENTRYPOINT,
        detach=True,
        name=container_name(model),
        user=container_user(engine.info().get("SecurityOptions") or [], os.getuid(), os.getgid()),
        network_mode="host",
        environment=server.env,
        volumes={str(folder): {"bind": str(Path(STATE_FILE).parent), "mode": "rw"}},
        labels={"mlops.role": ROLE, "mlops.model": model, "mlops.home": str(home)},
        restart_policy={"Name": "unless-stopped"},
    )
    try:
        wait_until_ready(container, f"{server.url}{server.health_path}", time.monotonic() + ready_timeout)
    except SmokeTestError as error:
        container.remove(force=True)
        raise RuntimeError(f"the router container of {model} ({image}) did not start: {error}") from error
    if not reusable(server):
        raise RuntimeError(f"the router container of {model} answers at {server.url} but not as a router")
    return True


def router_containers(engine: Any, home: Path) -> list[str]:
    """The models of ``home`` whose router runs as a container (running or not)."""
    found = engine.containers.list(all=True, filters={"label": [f"mlops.home={home}", f"mlops.role={ROLE}"]})
    return sorted(container.labels["mlops.model"] for container in found)


def stop_router_container(engine: Any, model: str) -> bool:
    """Stop and remove ``model``'s router container; False if there was none."""
    from docker.errors import NotFound

    try:
        container = engine.containers.get(container_name(model))
    except NotFound:
        return False
    container.stop(timeout=30)  # SIGTERM: in-flight requests finish
    container.remove(force=True)
    return True
