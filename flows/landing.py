"""The landing check: a short look at the landing folder that announces new data — scheduled, or every few
seconds by the landing watcher (``mlops watch-landing``).

It only lists file names and hashes (no parsing, no heavy imports) and emits ``data.landed`` on
the dataset when something new waits there. The ``train-on-new-data`` automation turns that into
a run of the training deployment; its cooldown and the deployment's concurrency limit keep a
burst of files from starting more than one training. Files stay in the landing folder until a
training run ingests them, so a check after the cooldown announces whatever is still waiting.
"""

from __future__ import annotations

import threading
from typing import Any

from prefect import flow, get_run_logger

from mlops.settings import get_settings
from mlops.spec import SpecError, spec_names
from tasks.events import emit
from tasks.ingest import list_new_batches


def announce(name: str, outside_runs: bool = False, announced: frozenset[str] = frozenset()) -> list[str]:
    """The new batches waiting in model ``name``'s landing folder; ``data.landed`` emitted on its dataset when any
    of them is not in ``announced`` (all of them by default).

    Raises:
        SpecError: The model's spec does not parse.
    """
    settings = get_settings()
    spec = settings.spec(name)
    landing = spec.landing_uri(settings.landing)
    batches = list_new_batches(landing)
    waiting = [batch.name for batch in batches]
    if set(waiting) - announced:
        size = sum(batch.size for batch in batches)
        payload = {"batches": waiting, "bytes": size, "landing": landing}
        emit("data.landed", "dataset", spec.name, payload, outside_runs=outside_runs)
    return waiting


def _models(model: str | None) -> list[str]:
    return [model] if model else spec_names(get_settings().specs_dir)


@flow(name="landing", log_prints=True)
def landing_flow(model: str | None = None) -> dict[str, list[str]]:
    """List new batches in the landing folder of ``model`` (default: every model with a spec); emit
    ``data.landed`` on each model's dataset that has any. A spec that does not parse is reported and skipped,
    so one broken file does not hide the data of the others."""
    logger = get_run_logger()
    found: dict[str, list[str]] = {}
    for name in _models(model):
        try:
            found[name] = announce(name)
        except SpecError as error:
            logger.warning("%s", error)
            continue
        logger.info("%s: %d new batch(es): %s", name, len(found[name]), ", ".join(found[name]) or "none")
    return found


def watch_landing(
    every: float = 2.0, model: str | None = None, stop: threading.Event | None = None, log: Any = print
) -> None:
    """Look at the landing folders every ``every`` seconds (a listing: names and sizes) and emit ``data.landed``
    as soon as a batch this watcher has not announced waits there — seconds after it lands, instead of at the
    next scheduled check. A batch is announced once while it waits (the automation's cooldown still keeps a
    burst from starting more than one training); runs until ``stop`` is set.

    Raises:
        RuntimeError: ``PREFECT_API_URL`` names no server, or none answers there.
    """
    import httpx
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        raise RuntimeError("the landing watcher sends events to a Prefect server: set PREFECT_API_URL (mlops up)")
    try:
        httpx.get(f"{api.rstrip('/')}/health", timeout=5.0).raise_for_status()
    except httpx.HTTPError as error:  # events sent nowhere would be lost without a word
        raise RuntimeError(f"no Prefect server answers at {api} ({error}): start it with `uv run mlops up`") from error
    stop = stop or threading.Event()
    announced: dict[str, frozenset[str]] = {}
    refused: set[str] = set()
    while True:
        for name in _models(model):
            try:
                waiting = announce(name, outside_runs=True, announced=announced.get(name, frozenset()))
            except SpecError as error:
                if name not in refused:  # said once, not every round
                    refused.add(name)
                    log(f"skipping {name}: {error}")
                continue
            refused.discard(name)
            fresh = set(waiting) - announced.get(name, frozenset())
            if fresh:
                log(f"{name}: data.landed for {', '.join(sorted(fresh))}")
            announced[name] = frozenset(waiting)  # claimed batches are forgotten; a re-landed one is new again
        if stop.wait(every):
            return
