"""The demo's figures from Prefect events: when all traffic moved to the challenger, read from its steps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect.events import Event

from cli.demo import describe, full_traffic_seconds

LANDED = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def step(at: float, weight: int, seconds: float) -> Event:
    return Event(
        occurred=LANDED + timedelta(seconds=at),
        event="rollout.step",
        resource={"prefect.resource.id": "mlops.model.diabetes"},
        payload={"canary weight %": weight, "seconds": seconds, "verdict": "pass", "version": "2"},
    )


def test_all_traffic_moved_when_the_100_percent_step_began_not_when_it_was_judged() -> None:
    events = [step(17.8, 25, 5.4), step(23.2, 100, 5.4)]
    assert full_traffic_seconds(events, LANDED) == 17.8  # 23.2 s - 5.4 s, at the microseconds of a timedelta
    assert full_traffic_seconds(events[:1], LANDED) is None  # rolled back, or still at 25 %
    assert describe(events[1]).startswith("canary at 100%: pass")
