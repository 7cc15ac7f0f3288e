"""The landing watcher: new batches are announced (``data.landed``) seconds after they land, once each while
they wait, for every model with a spec; a broken spec is reported once and does not hide the others."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.landing import watch_landing
from mlops.process import free_port
from mlops.settings import Settings
from tasks.sample_data import land_batches


def landed(model: str, since: datetime, count: int, timeout: float = 30.0) -> list[Any]:
    """The ``data.landed`` events on the model's dataset since ``since``, once ``count`` arrived (or ``timeout``)."""
    from tasks.events import read_events

    deadline = time.monotonic() + timeout
    while True:
        events = [e for e in read_events([model], since, ["data."]) if e.resource.id == f"mlops.dataset.{model}"]
        if len(events) >= count or time.monotonic() > deadline:
            return events
        time.sleep(0.1)


def test_batches_are_announced_seconds_after_they_land_and_once_while_they_wait(stack: Settings) -> None:
    since = datetime.now(UTC)
    said: list[str] = []
    stop = threading.Event()
    (stack.specs_dir / "broken.yaml").write_text("name: broken\ntask: [not, a, task]\n")
    watcher = threading.Thread(target=watch_landing, args=(0.2, None, stop, said.append), daemon=True)
    watcher.start()
    try:
        time.sleep(0.5)  # a few empty rounds: nothing waits, nothing is announced
        landed_at = time.monotonic()
        land_batches(stack.landing_for(), [0])
        first = landed(stack.model_name, since, 1)
        seen_after = time.monotonic() - landed_at
        time.sleep(1.0)  # five more rounds with the same batch waiting
        land_batches(stack.landing_for(), [1])
        both = landed(stack.model_name, since, 2)
        time.sleep(1.0)
        both = landed(stack.model_name, since, 3, timeout=0)  # and no third
    finally:
        stop.set()
        watcher.join(10)
    assert [event.event for event in first] == ["data.landed"], first
    assert seen_after < 30  # seconds, not the scheduled check's five minutes (the figure: in the closing note)
    assert [event.payload["batches"] for event in both] == [
        ["diabetes_batch_000.csv"],
        ["diabetes_batch_000.csv", "diabetes_batch_001.csv"],
    ]  # once per new batch, listing everything that waits
    assert sum("skipping broken" in line for line in said) == 1, said
    print(f"data.landed seen {seen_after:.2f} s after the batch landed")


def test_the_watcher_refuses_to_start_without_a_prefect_server_to_tell(stack: Settings) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/api"
    with temporary_settings({PREFECT_API_URL: nowhere}), pytest.raises(RuntimeError, match="no Prefect server answers"):
        watch_landing(0.1, stop=threading.Event())
