"""The Docker engine the image tasks talk to, through the ``docker`` SDK.

The engine is found the way the ``docker`` CLI finds it (``DOCKER_HOST``, else the default socket).
"""

from __future__ import annotations

import os

import docker
from docker.errors import DockerException

START_HINT = (
    "start one (Docker Desktop, `systemctl start docker`, or `.ci/docker-engine start` on a machine "
    "without a service) and point DOCKER_HOST at it"
)


class EngineUnavailable(RuntimeError):
    """No Docker engine answers where the client looks for one."""


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or "the default socket (unix:///var/run/docker.sock)"


def connect(timeout: int = 600) -> docker.DockerClient:
    """A client for a running engine.

    Raises:
        EngineUnavailable: Nothing answers at ``DOCKER_HOST`` / the default socket.
    """
    try:
        engine = docker.from_env(version="auto", timeout=timeout)  # newest API both sides speak
        engine.ping()
    except DockerException as error:
        raise EngineUnavailable(f"no Docker engine answers at {engine_address()}: {error}; {START_HINT}") from error
    return engine


def explain(error: DockerException) -> str:
    """The engine's own words for an API error, without the request URL the SDK puts in front."""
    return str(getattr(error, "explanation", None) or error)
