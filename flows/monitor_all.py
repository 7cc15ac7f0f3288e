"""The scheduled watch over every model of the stack: one ``monitor-model`` run per model with a champion.

All models are judged on the same window (it ends when this run starts). A model without a
champion is skipped and said so; a model whose monitoring fails does not stop the others, and this
run fails at the end naming every model that failed. The ``monitor/hourly`` deployment runs this
flow; ``mlops monitor --model NAME`` judges one model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from flows.monitor import MonitorOutcome, MonitorParameters, monitor_flow
from mlops.settings import get_settings
from mlops.spec import spec_names
from tasks.evaluate import champion_version
from tasks.tracking import check_tracking_server


class MonitorFailedError(RuntimeError):
    """The monitoring of one or more models failed (the others were judged)."""


class MonitorAllParameters(BaseModel):
    """Parameters of the scheduled monitoring of every model (rendered as a form in the Prefect UI)."""

    window_minutes: float = Field(60, gt=0, description="Judge the requests served in this many minutes.")
    window_end: datetime | None = Field(None, description="End of the window (default: now); set it to re-judge one.")
    models: list[str] | None = Field(None, description="Only these models (default: every spec in MLOPS_MODELS_DIR).")


@dataclass(frozen=True)
class MonitorAllOutcome:
    """Each judged model's outcome, and the models skipped for want of a champion."""

    window_end: datetime
    outcomes: list[MonitorOutcome] = field(default_factory=list)
    without_champion: list[str] = field(default_factory=list)


@flow(name="monitor", log_prints=True)
def monitor_all_flow(params: MonitorAllParameters | None = None) -> MonitorAllOutcome:
    """Judge the last window of served requests of every model that has a champion."""
    params = params or MonitorAllParameters()
    settings = get_settings()
    logger = get_run_logger()
    check_tracking_server(settings.tracking_uri)
    names = params.models or spec_names(settings.specs_dir)
    result = MonitorAllOutcome(window_end=params.window_end or datetime.now(UTC))
    failed: dict[str, str] = {}
    for name in names:
        if champion_version(settings.tracking_uri, name) is None:
            logger.info("%s has no champion yet: not monitored", name)
            result.without_champion.append(name)
            continue
        one = MonitorParameters(window_minutes=params.window_minutes, window_end=result.window_end, model_name=name)
        state = monitor_flow(one, return_state=True)
        if state.is_completed():
            result.outcomes.append(state.result())
        else:
            failed[name] = state.message or state.name or "failed"
    if failed:
        listed = "; ".join(f"{name}: {why}" for name, why in failed.items())
        raise MonitorFailedError(f"monitoring failed for {len(failed)} of {len(names)} models ({listed})")
    return result
