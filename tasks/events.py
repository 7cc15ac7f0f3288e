"""Lifecycle events, as Prefect events on ``mlops.model.<name>`` / ``mlops.dataset.<name>`` resources.

Names (see DESIGN.md): data.accepted, data.rejected, model.trained, model.registered,
model.kept, rollout.*, drift.detected, performance.degraded. Automations react to them.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect.context import FlowRunContext, TaskRunContext
from prefect.events import emit_event

ResourceKind = Literal["model", "dataset"]


def resource_id(kind: ResourceKind, name: str) -> str:
    return f"mlops.{kind}.{name}"


def emit(event: str, kind: ResourceKind, name: str, payload: dict[str, Any]) -> None:
    """Emit a lifecycle event from inside a flow or task run; outside one (a plain call) it does nothing.

    Outside a run Prefect would start a temporary server just to deliver the event.
    """
    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return
    emit_event(
        event=event,
        resource={"prefect.resource.id": resource_id(kind, name), "prefect.resource.name": name},
        payload=payload,
    )
