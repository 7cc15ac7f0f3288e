"""Where deployments run: ONNX server processes (the embedded default) or containers of a release image.

A target starts a named deployment of one model version and returns its URL, and stops it by
name. Processes are started detached with a pid file (they outlive the flow run that started
them, like any deployment); containers are labelled and found again by name.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mlops.process import ManagedServer, free_port, start, stop
from serving.collector import requests_dir
from tasks.serving_bundle import fetch_bundle, resolve_version

IMAGE_UID = 65532  # the serving image's user (deployments/docker/serving.Dockerfile)


class DeploymentTarget(Protocol):
    kind: str

    def start(self, name: str, model_name: str, version: str) -> str:
        """Start deployment ``name`` of ``model_name`` ``version``; return its base URL once ready."""
        ...

    def stop(self, name: str) -> bool:
        """Stop deployment ``name``; False if none of ours was running."""
        ...

    def collected(self, model_name: str) -> Path | None:
        """Where the deployments of ``model_name`` collect their requests; None when they do not."""
        ...


def _ready(body: str) -> bool:
    return '"ready":true' in body.replace(" ", "")


@dataclass
class ProcessTarget:
    """``python -m serving <bundle>`` per deployment, on a free loopback port.

    Attributes:
        tracking_uri: MLflow server the bundles come from.
        home: Root of the embedded state: bundles, deployment pid files and logs, collected requests.
        env: Extra environment per deployment name (e.g. ``MLOPS_SERVING_TOKEN``, chaos knobs in tests).
    """

    tracking_uri: str
    home: Path
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    kind: str = "process"

    def collected(self, model_name: str) -> Path | None:
        return requests_dir(self.home, model_name)

    def _server(self, name: str, port: int = 0, bundle: Path | None = None, model_name: str = "") -> ManagedServer:
        command = [sys.executable, "-m", "serving", str(bundle or ""), "--port", str(port)]
        if model_name:
            command += ["--collect-dir", str(requests_dir(self.home, model_name))]
        return ManagedServer(
            name=f"deployment-{name}",
            command=command,
            host="127.0.0.1",
            port=port,
            health_path="/v2/health/ready",
            is_expected=_ready,
            state_dir=self.home / "deployments",
            env=self.env.get(name, {}),
        )

    def start(self, name: str, model_name: str, version: str) -> str:
        bundle = self.home / "bundles" / f"{model_name}-{version}"
        fetch_bundle(self.tracking_uri, f"models:/{model_name}/{version}", bundle)
        server = self._server(name, free_port(), bundle, model_name)
        start(server, timeout=60)
        return server.url

    def stop(self, name: str) -> bool:
        return stop(self._server(name))

    def running(self) -> list[str]:
        """Names of the deployments this target started and has not stopped (by pid file)."""
        return sorted(path.stem.removeprefix("deployment-") for path in (self.home / "deployments").glob("*.pid"))


def container_user(security_options: list[str], uid: int, gid: int) -> str:
    """Who a deployment's container runs as, so that it can write the 0700 requests folder of the host user:

    - rootless engine (``name=rootless``): ``0:0``, which *is* the host user there (any other uid maps to a
      subordinate uid that cannot write the folder); it is not root on the host;
    - otherwise never root: the image's own user when we are root (the folder is chowned to it), else the
      host user's uid and gid.
    """
    if any("name=rootless" in option for option in security_options):
        return "0:0"
    return f"{IMAGE_UID}:{IMAGE_UID}" if uid == 0 else f"{uid}:{gid}"


@dataclass
class DockerTarget:
    """A container of the version's release image (``image_ref`` tag) per deployment, host network.

    With ``home``, the container collects its requests into ``<home>/requests/<model>`` (mounted at
    ``/requests``, writable by the image's uid 65532), where the monitor reads them.
    """

    tracking_uri: str
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    kind: str = "docker"
    ready_timeout: float = 60.0
    home: Path | None = None

    def collected(self, model_name: str) -> Path | None:
        return requests_dir(self.home, model_name) if self.home is not None else None

    def _engine(self) -> Any:
        from tasks.docker_engine import connect

        return connect()

    def start(self, name: str, model_name: str, version: str) -> str:
        from tasks.smoke import SmokeTestError, wait_until_ready

        tags = resolve_version(self.tracking_uri, f"models:/{model_name}/{version}").tags
        image = tags.get("image_ref")
        if not image or tags.get("image_smoke") != "passed":
            raise RuntimeError(
                f"{model_name} version {version} has no smoke-tested image (image_ref={image!r}, "
                f"image_smoke={tags.get('image_smoke')!r}): run the release flow's image step first"
            )
        engine = self._engine()
        self._remove_leftover(engine, name)
        port = free_port()
        environment = {"MLOPS_SERVING_HOST": "127.0.0.1", "MLOPS_SERVING_PORT": str(port)}
        labels = {"mlops.role": "deployment", "mlops.deployment": name, "mlops.model": model_name}
        volumes = {}
        if self.home is not None:
            labels["mlops.home"] = str(self.home)
            collected = requests_dir(self.home, model_name)
            collected.mkdir(mode=0o700, parents=True, exist_ok=True)
            collected.chmod(0o700)  # private to whoever runs the deployments (an older home may have 0777)
            if os.getuid() == 0:  # the image's own non-root user writes it (see container_user)
                os.chown(collected, IMAGE_UID, IMAGE_UID)
            volumes[str(collected)] = {"bind": "/requests", "mode": "rw"}
            environment["MLOPS_SERVING_COLLECT_DIR"] = "/requests"
        container = engine.containers.run(
            image,
            detach=True,
            name=f"mlops-{name}",
            user=container_user(engine.info().get("SecurityOptions") or [], os.getuid(), os.getgid()),
            network_mode="host",
            environment={**environment, **self.env.get(name, {})},
            volumes=volumes,
            labels=labels,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_ready(container, f"{url}/v2/health/ready", time.monotonic() + self.ready_timeout)
        except SmokeTestError as error:
            container.remove(force=True)
            raise RuntimeError(f"deployment {name} ({image}) did not start: {error}") from error
        return url

    @staticmethod
    def _remove_leftover(engine: Any, name: str) -> None:
        """A container of this name not in the routing table is a leftover of a crashed or stopped run."""
        from docker.errors import NotFound

        with contextlib.suppress(NotFound):
            engine.containers.get(f"mlops-{name}").remove(force=True)

    def running(self) -> list[str]:
        """Names of the deployments this target started for its home and that still exist."""
        if self.home is None:
            return []
        labels = [f"mlops.home={self.home}", "mlops.role=deployment"]
        found = self._engine().containers.list(all=True, filters={"label": labels})
        return sorted(container.labels["mlops.deployment"] for container in found)

    def stop(self, name: str) -> bool:
        from docker.errors import NotFound

        try:
            container = self._engine().containers.get(f"mlops-{name}")
        except NotFound:
            return False
        container.stop(timeout=30)  # SIGTERM: in-flight requests finish, collection is flushed
        container.remove(force=True)
        return True
