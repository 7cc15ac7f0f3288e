"""The landing check: a short, scheduled look at the landing folder that announces new data.

It only lists file names and hashes (no parsing, no heavy imports) and emits ``data.landed`` on
the dataset when something new waits there. The ``train-on-new-data`` automation turns that into
a run of the training deployment; its cooldown and the deployment's concurrency limit keep a
burst of files from starting more than one training. Files stay in the landing folder until a
training run ingests them, so a check after the cooldown announces whatever is still waiting.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from mlops.settings import get_settings
from tasks.events import emit
from tasks.ingest import list_new_batches


@flow(name="landing", log_prints=True)
def landing_flow(model: str | None = None) -> list[str]:
    """List new batches in the model's landing folder; emit ``data.landed`` when there are any."""
    settings = get_settings()
    spec = settings.spec(model)
    landing = spec.landing_uri(settings.landing)
    batches = list_new_batches(landing)
    names = [batch.name for batch in batches]
    if names:
        emit(
            "data.landed",
            "dataset",
            spec.name,
            {"batches": names, "bytes": sum(batch.size for batch in batches), "landing": landing},
        )
    get_run_logger().info("%d new batch(es) in %s: %s", len(names), landing, ", ".join(names) or "none")
    return names
