"""Lifecycle events, as Prefect events on ``mlops.model.<name>`` / ``mlops.dataset.<name>`` resources.

Names (see DESIGN.md): data.accepted, data.rejected, model.trained, model.registered,
model.kept, rollout.*, drift.detected, performance.degraded. Automations react to them.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect.events import emit_event

ResourceKind = Literal["model", "dataset"]


def resource_id(kind: ResourceKind, name: str) -> str:
    return f"mlops.{kind}.{name}"


def emit(event: str, kind: ResourceKind, name: str, payload: dict[str, Any]) -> None:
    """Emit a lifecycle event; a no-op where no Prefect API is configured."""
    emit_event(
        event=event,
        resource={"prefect.resource.id": resource_id(kind, name), "prefect.resource.name": name},
        payload=payload,
    )
