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
from mlops.spec import SpecError, spec_names
from tasks.events import emit
from tasks.ingest import list_new_batches


@flow(name="landing", log_prints=True)
def landing_flow(model: str | None = None) -> dict[str, list[str]]:
    """List new batches in the landing folder of ``model`` (default: every model with a spec); emit
    ``data.landed`` on each model's dataset that has any. A spec that does not parse is reported and skipped,
    so one broken file does not hide the data of the others."""
    settings = get_settings()
    logger = get_run_logger()
    found: dict[str, list[str]] = {}
    for name in [model] if model else spec_names(settings.specs_dir):
        try:
            spec = settings.spec(name)
        except SpecError as error:
            logger.warning("%s", error)
            continue
        landing = spec.landing_uri(settings.landing)
        batches = list_new_batches(landing)
        found[spec.name] = [batch.name for batch in batches]
        if batches:
            size = sum(batch.size for batch in batches)
            emit("data.landed", "dataset", spec.name, {"batches": found[spec.name], "bytes": size, "landing": landing})
        logger.info(
            "%s: %d new batch(es) in %s: %s", spec.name, len(batches), landing, ", ".join(found[spec.name]) or "none"
        )
    return found
