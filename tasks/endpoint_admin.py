"""The model's endpoint on this machine: the router process, and a client of its admin API.

``start_endpoint`` starts (or reuses) one ``python -m serving.router`` per model, the default model on
``MLOPS_ENDPOINT_PORT`` and every other on a port of its own, with its routing table saved under
``<home>/endpoint/<model>.json``; ``EndpointClient`` is what the rollout uses to
add and remove deployments, move weights and read per-deployment windows.
"""

from __future__ import annotations

import secrets
import sys
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from mlops.process import ManagedServer, free_port, start, stop
from mlops.settings import Settings
from serving.endpoint import Deployment, RoutingTable

ROUTER_PREFIX = "router-"


class EndpointAdminError(RuntimeError):
    """The router refused an admin call; the message is the router's."""


def admin_token(settings: Settings) -> str:
    """``MLOPS_ENDPOINT_ADMIN_TOKEN``, else one generated once and kept (mode 600) under ``<home>/endpoint``."""
    if settings.endpoint_admin_token:
        return settings.endpoint_admin_token
    path = settings.resolved_home / "endpoint" / "admin-token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24))
    return path.read_text().strip()


def endpoint_port(settings: Settings, model: str) -> int:
    """The port of ``model``'s endpoint: ``MLOPS_ENDPOINT_PORT`` for the default model (``MLOPS_MODEL_NAME``);
    for any other, a free port chosen once and kept in ``<home>/endpoint/<model>.port``, so its URL stays."""
    if model == settings.model_name:
        return settings.endpoint_port
    path = settings.resolved_home / "endpoint" / f"{model}.port"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(free_port(settings.endpoint_host)))
    return int(path.read_text().strip())


def endpoint_url(settings: Settings, model: str | None = None) -> str | None:
    """The URL of ``model``'s endpoint; None for a model whose endpoint never started (no port chosen yet)."""
    name = model or settings.model_name
    if name != settings.model_name and not (settings.resolved_home / "endpoint" / f"{name}.port").exists():
        return None
    return f"http://{settings.endpoint_host}:{endpoint_port(settings, name)}"


def router_server(settings: Settings, model: str | None = None) -> ManagedServer:
    name = model or settings.model_name
    folder = settings.resolved_home / "endpoint"
    port = endpoint_port(settings, name)
    command = [
        sys.executable, "-m", "serving.router", "--model", name,
        "--host", settings.endpoint_host, "--port", str(port),
        "--state-file", str(folder / f"{name}.json"),
    ]  # fmt: skip
    return ManagedServer(
        name=f"{ROUTER_PREFIX}{name}",
        command=command,
        host=settings.endpoint_host,
        port=port,
        health_path="/metrics",
        is_expected=lambda body: "mlops_endpoint_weight" in body,
        state_dir=folder,
        env={"MLOPS_ROUTER_ADMIN_TOKEN": admin_token(settings)},
    )


def start_endpoint(settings: Settings, model: str | None = None, image: str | None = None) -> EndpointClient:
    """Start (or reuse) the router of ``model`` (default: ``MLOPS_MODEL_NAME``); a client of its admin API.

    The router is a process, or with ``MLOPS_ENDPOINT_RUNTIME=docker`` a container of the serving ``image``
    (``tasks.router_container``).
    """
    server = router_server(settings, model)
    if settings.endpoint_runtime == "docker":
        from tasks.router_container import start_router_container

        start_router_container(server, model or settings.model_name, image, settings.resolved_home)
    else:
        start(server, timeout=30)
    return EndpointClient(server.url, admin_token(settings))


def stop_endpoint(settings: Settings, model: str | None = None) -> bool:
    return stop(router_server(settings, model))


def running_endpoints(settings: Settings) -> list[str]:
    """The models whose routers this home started and has not stopped (by pid file)."""
    folder = settings.resolved_home / "endpoint"
    return sorted(path.stem.removeprefix(ROUTER_PREFIX) for path in folder.glob(f"{ROUTER_PREFIX}*.pid"))


@dataclass(frozen=True)
class EndpointClient:
    url: str
    token: str
    timeout: float = 60.0

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            response = httpx.request(
                method, f"{self.url}/admin/{path}", json=body, headers=headers, timeout=self.timeout
            )
        except httpx.TransportError as error:
            raise EndpointAdminError(f"endpoint at {self.url} unreachable: {error}") from error
        if not response.is_success:
            raise EndpointAdminError(f"{method} /admin/{path}: {response.status_code} {response.text[:500]}")
        return response.json()

    def table(self) -> RoutingTable:
        return RoutingTable.from_dict(self._call("GET", "deployments"))

    def add(self, deployment: Deployment) -> RoutingTable:
        return RoutingTable.from_dict(self._call("POST", "deployments", asdict(deployment)))

    def move(self, name: str, url: str) -> RoutingTable:
        """Point deployment ``name`` at ``url`` (its server restarted), weight and version kept."""
        return RoutingTable.from_dict(self._call("PUT", f"deployments/{name}", {"url": url}))

    def remove(self, name: str) -> bool:
        """Remove a deployment once its in-flight requests finished; True if it drained in time."""
        return bool(self._call("DELETE", f"deployments/{name}")["drained"])

    def set_weights(self, weights: dict[str, int], mirror: float | None = None) -> RoutingTable:
        body: dict[str, Any] = {"weights": weights}
        if mirror is not None:
            body["mirror"] = mirror
        return RoutingTable.from_dict(self._call("PUT", "weights", body))

    def stats(self, since: float) -> dict[str, dict[str, Any]]:
        """Per deployment, what it did since ``since`` (epoch): requests, codes, p50/p99, predictions."""
        return dict(self._call("GET", f"stats?since={since}")["deployments"])

    def totals(self) -> dict[str, dict[str, int]]:
        """Per deployment, cumulative requests and faults (5xx, not-finite 422; cheap: for polling)."""
        return dict(self._call("GET", "stats?window=0")["deployments"])
