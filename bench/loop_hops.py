"""Where the loop's seconds go: each hop from data landing to the challenger at 100 %, read back from the
Prefect server's own events (the landing, the automations, the flow runs' states, the lifecycle events).

Not a test: prints a table. Run it after a loop, against the same Prefect server, e.g. after ``make run``:

    uv run python bench/loop_hops.py [--model diabetes] [--api http://127.0.0.1:4200/api]

The last ``data.landed`` of the model's dataset starts the table; the first ``rollout.promoted`` or
``rollout.rolled_back`` after it ends it. Each line: seconds since the landing, seconds since the line
before, and what happened (a flow run's state is shown with its deployment; a rollout step twice: when the
canary took its share of the traffic, and when the step was judged after its bake).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LIFECYCLE = ("data.", "model.", "rollout.", "drift.")
RUN_STATES = {"Scheduled", "Running", "Completed", "Failed", "Crashed", "AwaitingConcurrencySlot"}
ENDS = {"rollout.promoted", "rollout.rolled_back"}


def all_events(since: datetime) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventOccurredFilter

    with get_client(sync_client=True) as prefect:
        page = prefect.read_events(filter=EventFilter(occurred=EventOccurredFilter(since=since)), limit=50)
        events = list(page.events)
        while page.next_page is not None:
            page = prefect.read_events_page(str(page.next_page))
            events += page.events
    return sorted(events, key=lambda event: event.occurred)


def deployment_of(event: Any) -> str:
    """``flow/deployment`` of a flow-run event, from its related resources."""
    related = {resource.get("prefect.resource.role"): resource for resource in event.related}
    flow = (related.get("flow") or {}).get("prefect.resource.name", "?")
    deployment = (related.get("deployment") or {}).get("prefect.resource.name", "-")
    return f"{flow}/{deployment}"


def hops(events: list[Any], model: str) -> list[tuple[datetime, str]]:
    """The loop's lines: from the model's last landing to the rollout's end (empty without a landing)."""
    from tasks.events import step_began

    ours = {f"mlops.model.{model}", f"mlops.dataset.{model}"}
    landings = [i for i, event in enumerate(events) if event.event == "data.landed" and event.resource.id in ours]
    if not landings:
        return []
    lines: list[tuple[datetime, str]] = []
    for event in events[landings[-1] :]:
        name = event.event
        if event.resource.id in ours and name == "rollout.step" and "canary weight %" in event.payload:
            weight, verdict = event.payload["canary weight %"], event.payload.get("verdict")
            what = "shadow (mirrored traffic only)" if event.payload.get("phase") == "shadow" else f"{weight} %"
            lines += [(step_began(event), f"canary at {what}"), (event.occurred, f"{name} {what}: {verdict}")]
        elif event.resource.id in ours and name.startswith(LIFECYCLE):
            lines.append((event.occurred, name))
            if name in ENDS:
                break
        elif name.startswith("prefect.flow-run.") and name.removeprefix("prefect.flow-run.") in RUN_STATES:
            lines.append((event.occurred, f"{deployment_of(event)} {name.removeprefix('prefect.flow-run.')}"))
        elif name in {"prefect.automation.triggered", "prefect.automation.action.executed"}:
            what = name.removeprefix("prefect.automation.")
            lines.append((event.occurred, f"automation {event.resource.get('prefect.resource.name')}: {what}"))
    return sorted(lines, key=lambda line: line[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: MLOPS_MODEL_NAME")
    parser.add_argument("--api", default=None, help="Prefect API (default: PREFECT_API_URL, else the local stack's)")
    parser.add_argument("--hours", type=float, default=24.0, help="how far back to look (default 24)")
    args = parser.parse_args(argv)

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from mlops.settings import get_settings

    settings = get_settings()
    api = args.api or settings.prefect_url
    with temporary_settings(updates={PREFECT_API_URL: api}):
        try:
            events = all_events(datetime.now(UTC) - timedelta(hours=args.hours))
        except httpx.HTTPError as error:
            print(f"no Prefect server answers at {api} ({error}): start it with `uv run mlops up`", file=sys.stderr)
            return 1
    lines = hops(events, args.model or settings.model_name)
    if not lines:
        print("no data.landed for this model on this server: run the loop first (make run)", file=sys.stderr)
        return 1
    start = previous = lines[0][0]
    print(f"{'at s':>6} {'+s':>5}  what")
    for when, what in lines:
        print(f"{(when - start).total_seconds():6.1f} {(when - previous).total_seconds():5.1f}  {what}")
        previous = when
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
