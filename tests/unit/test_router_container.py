"""The router as a container: what a release must bring, checked before any engine is asked."""

from __future__ import annotations

import pytest

from mlops.process import free_port
from mlops.settings import Settings
from tasks.endpoint_admin import start_endpoint


def test_a_router_container_needs_an_image_and_says_so(isolated_settings: Settings) -> None:
    settings = isolated_settings.model_copy(update={"endpoint_runtime": "docker", "endpoint_port": free_port()})
    with pytest.raises(RuntimeError, match=r"MLOPS_ENDPOINT_RUNTIME=docker\) and no serving image"):
        start_endpoint(settings, settings.model_name)
    assert not (settings.resolved_home / "endpoint" / "containers").exists()  # nothing started, nothing written
