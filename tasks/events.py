"""Lifecycle events, as Prefect events on ``mlops.model.<name>`` / ``mlops.dataset.<name>`` resources.

Names (see DESIGN.md): data.accepted, data.rejected, model.trained, model.registered,
model.kept, rollout.*, drift.detected, performance.degraded. Automations react to them.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta
from typing import Any, Literal

from prefect.context import FlowRunContext, TaskRunContext
from prefect.events import emit_event
from prefect.logging import get_run_logger

ResourceKind = Literal["model", "dataset"]


def resource_id(kind: ResourceKind, name: str) -> str:
    return f"mlops.{kind}.{name}"


def in_prefect_run() -> bool:
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def run_logger(name: str) -> logging.Logger | logging.LoggerAdapter[Any]:
    """The Prefect run logger inside a flow or task run (its lines reach the UI), else the module's logger."""
    return get_run_logger() if in_prefect_run() else logging.getLogger(name)


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key from names (keys allow only lowercase letters, digits and dashes)."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def emit(
    event: str,
    kind: ResourceKind,
    name: str,
    payload: dict[str, Any],
    labels: dict[str, str] | None = None,
    outside_runs: bool = False,
) -> None:
    """Emit a lifecycle event from inside a flow or task run; outside one (a plain call) it does nothing, unless
    ``outside_runs`` (a long-running watcher, whose caller made sure ``PREFECT_API_URL`` names a server).

    ``labels`` are extra resource labels (``mlops.*``) automations can match on, unlike the payload.
    Outside a run Prefect would otherwise start a temporary server just to deliver the event.
    """
    if not (outside_runs or in_prefect_run()):
        return
    emit_event(
        event=event,
        resource={"prefect.resource.id": resource_id(kind, name), "prefect.resource.name": name, **(labels or {})},
        payload=payload,
    )


def read_events(names: list[str], since: Any, prefixes: list[str]) -> list[Any]:
    """The events named ``prefixes*`` on the model and dataset resources ``names`` since ``since``, oldest first.

    Read from the Prefect API in ``PREFECT_API_URL`` (every page). The filter is built per call:
    its ``until`` defaults to the moment it is made.
    """
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

    wanted = EventFilter(
        occurred=EventOccurredFilter(since=since),
        event=EventNameFilter(prefix=prefixes),
        resource=EventResourceFilter(id=[resource_id(kind, name) for name in names for kind in ("model", "dataset")]),
    )
    with get_client(sync_client=True) as prefect:
        page = prefect.read_events(filter=wanted, limit=50)  # the API's largest page
        events = list(page.events)
        while page.next_page is not None:
            page = prefect.read_events_page(str(page.next_page))
            events += page.events
    return sorted(events, key=lambda event: event.occurred)


def step_began(event: Any) -> datetime:
    """When a ``rollout.step`` began: the canary took its share then (the event comes at the step's end, its
    ``seconds`` counted from the weights' change)."""
    return event.occurred - timedelta(seconds=float(event.payload.get("seconds", 0)))
