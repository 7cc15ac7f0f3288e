"""The demo: the whole loop on the embedded defaults, one step line at a time, ending with the URLs.

1. MLflow and Prefect servers, the process worker, the deployments of ``prefect.yaml`` and the
   automations (``mlops up`` + ``mlops deploy``);
2. the first champion, trained by the model's ``train/<model>`` deployment and put behind the endpoint;
   then the landing watcher starts;
3. traffic through the endpoint whose inputs have drifted, and new labelled data landing;
4. from there on only Prefect automations act: the watcher's ``data.landed`` -> retraining ->
   ``model.registered`` (challenger) -> release (an image where a Docker engine answers, a process
   deployment otherwise) -> canary -> promoted. Once the canary starts, the ``monitor-model/<model>``
   deployment judges the traffic while the rollout bakes (so it does not share the 2 cores with the
   training): ``drift.detected`` (its retraining, finding nothing new, changes nothing).

The lines come from the lifecycle events as they reach the Prefect server. ``mlops down`` stops
everything; a second ``mlops demo`` finds the story told and prints where to look.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

from mlops.settings import Settings

ROLLOUT = {"steps": [25, 100], "bake_seconds": 5, "min_requests": 20, "p99_slack_ms": 50, "compare_predictions": False}
FOLLOWED = ["drift.", "performance.", "data.", "model.", "rollout."]
ENDS = {"rollout.promoted", "rollout.rolled_back", "model.kept"}
SETTLE_SECONDS = 120.0  # at most this long after the ending for what runs beside it (the monitor) to finish


class Progress:
    """Step lines with the seconds since the demo started."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", flush=True)


def _run(name: str, parameters: dict[str, Any] | None = None) -> Any:
    """Run a deployment through the worker and wait for it; raise when it does not complete."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    flow_run = cast(FlowRun, run_deployment(name, parameters=parameters or {}, timeout=900, poll_interval=1))
    if flow_run.state is None or not flow_run.state.is_completed():
        state = flow_run.state.name if flow_run.state else "unknown"
        raise RuntimeError(f"deployment {name}: flow run {flow_run.name} ended {state}; see the Prefect UI")
    return flow_run


def score(payload: dict[str, Any]) -> str:
    """The model's headline metric in an event: rmse for a regression, ROC AUC for a classifier."""
    for name in ("rmse", "roc_auc", "accuracy"):
        if isinstance(payload.get(name), int | float):
            return f"{name} {payload[name]:.3g}"
    return "no metric"


def describe(event: Any) -> str:
    """One line for a lifecycle event."""
    payload, name = event.payload, event.event
    if name == "drift.detected":
        return f"drift detected in {', '.join(payload['drifted_columns']) or 'predictions'} -> retraining (automation)"
    if name == "model.registered":
        return f"version {payload['version']} registered as {payload['alias']} ({score(payload)})"
    if name == "rollout.started":
        return f"canary of version {payload['version']} started beside version {payload['champion']}"
    if name == "rollout.step":
        where = "shadow (mirrored traffic only)" if payload.get("phase") == "shadow" else "canary at"
        return (
            f"{where} {payload.get('canary weight %')}%: {payload.get('verdict')} "
            f"(canary req/err/p99 {payload.get('canary req / err / p99')}; KS {payload.get('KS')})"
        )
    if name == "rollout.promoted":
        return f"version {payload['version']} promoted: it serves 100% of the endpoint"
    if name == "rollout.rolled_back":
        return f"version {payload['version']} rolled back: {payload.get('reason', '')}"
    if name == "data.landed":
        return f"the landing watcher saw {len(payload['batches'])} new batch(es) -> training (automation)"
    if name == "data.accepted":
        return f"batch {payload['batch']} accepted ({payload['rows']} rows)"
    if name == "model.trained":
        return f"candidate trained ({payload['family']}, {score(payload)})"
    return name


def failed_runs(since: Any) -> list[str]:
    """Flow runs that started after ``since`` and failed or crashed, each as one line."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    wanted = FlowRunFilter(
        start_time=FlowRunFilterStartTime(after_=since),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.FAILED, StateType.CRASHED])),
    )
    with get_client(sync_client=True) as prefect:
        runs = prefect.read_flow_runs(flow_run_filter=wanted)
    return [f"flow run {run.name} {run.state_name}: {run.state.message if run.state else ''}"[:400] for run in runs]


def follow(
    model_name: str,
    since: Any,
    progress: Progress,
    timeout: float,
    on_event: Callable[[Any], None] = lambda event: None,
    settled: Callable[[], bool] = lambda: True,
) -> tuple[str | None, list[Any]]:
    """Print the model's lifecycle events as they arrive (each passed to ``on_event`` too) until the story ends and
    ``settled()`` holds, or a flow run fails; returns how it ended and the events seen."""
    from tasks.events import read_events

    seen: dict[str, Any] = {}
    end: str | None = None
    ended_at = 0.0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in read_events([model_name], since, FOLLOWED):
            if str(event.id) in seen:
                continue
            seen[str(event.id)] = event
            progress(describe(event))
            on_event(event)
            if end is None and event.event in ENDS:  # the rollout's ending; later ones are another story's
                end, ended_at = event.event, time.monotonic()
        if end is not None and (settled() or time.monotonic() - ended_at > SETTLE_SECONDS):
            return end, list(seen.values())
        if failures := failed_runs(since):
            for failure in failures:
                progress(failure)
            return "a flow run failed (see the Prefect UI)", list(seen.values())
        time.sleep(0.5)
    return end, list(seen.values())


class Monitor:
    """The model's ``monitor-model/<model>`` deployment, run once when the canary starts: it judges the drifted traffic
    while the rollout bakes (its CPU stays off the training's critical path on 2 cores) and its ``drift.detected``
    reaches the story before it ends."""

    EVENTS_LAG = 3.0  # seconds the last events of a finished run may take to reach the database (flush: 1 s)

    def __init__(self, model: str) -> None:
        self.model = model
        self.run_id: Any = None
        self.finished_at: float | None = None

    def on_event(self, event: Any) -> None:
        from prefect.client.schemas.objects import FlowRun
        from prefect.deployments import run_deployment

        if event.event == "rollout.started" and self.run_id is None:
            self.run_id = cast(FlowRun, run_deployment(f"monitor-model/{self.model}", timeout=0)).id

    def settled(self) -> bool:
        """No monitor run, or it finished a few seconds ago (its events are in)."""
        from prefect.client.orchestration import get_client

        if self.run_id is None:
            return True
        if self.finished_at is None:
            with get_client(sync_client=True) as prefect:
                state = prefect.read_flow_run(self.run_id).state
            if state is None or not state.is_final():
                return False
            self.finished_at = time.monotonic()
        return time.monotonic() - self.finished_at >= self.EVENTS_LAG


def full_traffic_seconds(events: list[Any], since: Any) -> float | None:
    """Seconds from ``since`` to the moment the canary took 100 % of the traffic: the start of its 100 % step (that
    step's event comes at its end, after the bake that confirms it)."""
    from tasks.events import step_began

    for event in events:
        if event.event == "rollout.step" and event.payload.get("canary weight %") == 100:
            return (step_began(event) - since).total_seconds()
    return None


def run_demo(settings: Settings, family: str | None) -> int:
    """Tell the whole story once (see the module doc); print where to look."""
    from concurrent.futures import ThreadPoolExecutor
    from datetime import UTC, datetime

    from cli.stack import deploy, up
    from cli.traffic import BackgroundTraffic
    from deployments.landing_watcher import start_watcher
    from deployments.prefect_worker import start_worker, stop_worker
    from flows.release import engine_answers
    from tasks.dataset import ledger_entries
    from tasks.ingest import accepted_frame
    from tasks.sample_data import DEFAULT_BATCHES, batch_name, client_records, drift_columns, drifted, land_batches
    from tasks.tracking import alias_version

    progress = Progress()
    progress("starting the MLflow and Prefect servers and the worker ...")
    with ThreadPoolExecutor(max_workers=1) as pool:  # the worker's imports overlap the servers' start
        worker = pool.submit(start_worker, settings)
        try:
            up(settings)
        except BaseException:
            stop_worker(settings)  # not left waiting for a server that failed to start
            raise
        worker.result()
    # Containers of smoke-tested images where a Docker engine answers, processes otherwise.
    rollout = {**ROLLOUT, "target": "docker" if engine_answers() else "process"}
    progress(f"registering the deployments and automations (deployments: {rollout['target']}) ...")
    # The landing watcher starts once the first champion serves: batch 0 is the demo's to train on.
    deploy(settings, {"params": {"version": "challenger", "image": "auto", "rollout": rollout}}, watch=False)
    tracking, model = settings.tracking_uri, settings.model_name
    spec = settings.spec(model)
    landing, data = spec.landing_uri(settings.landing), spec.data_uri(settings.data)
    ingested = {entry["name"] for entry in ledger_entries(data)}
    if alias_version(tracking, model, "champion") is None:
        if batch_name(0, model) not in ingested:
            land_batches(landing, [0], spec=spec)
        progress(f"training the first champion on batch 0 (deployment train/{model}) ...")
        # one family, for a quick first champion: the one asked for, else the spec's first
        training = {**spec.training.model_dump(mode="json"), "families": [family or spec.training.families[0]]}
        _run(f"train/{model}", {"params": {"model": model, "training": training}})
    champion = alias_version(tracking, model, "champion")
    progress(f"version {champion} is the champion; putting it behind the endpoint ...")
    _run("release/challenger", {"params": {"version": "champion", "image": "auto", "rollout": rollout}})
    endpoint = f"http://{settings.endpoint_host}:{settings.endpoint_port}"
    start_watcher(settings)
    later = [index for index in range(1, DEFAULT_BATCHES) if batch_name(index, model) not in ingested]
    if not later:
        progress("this home told the story before (every batch is trained on): nothing new to show")
        return _where_to_look(settings, endpoint)

    frame = accepted_frame(data)
    assert frame is not None  # batch 0 was accepted above
    features = list(spec.feature_names)
    shifted = drift_columns(frame, features)
    records = client_records(drifted(frame, columns=shifted)[features])
    body = lambda rng: {"dataframe_records": [records[rng.randrange(len(records))]]}  # noqa: E731
    with BackgroundTraffic(f"{endpoint}/invocations", body, max_seconds=900, concurrency=2, pause=0.01) as traffic:
        changed = f"{len(shifted)} of {len(features)} inputs have drifted"
        progress(f"traffic flows through the endpoint; the world changed: {changed}")
        while traffic.result.requests < 300:
            time.sleep(0.2)
        since = datetime.now(UTC)
        land_batches(landing, later, spec=spec)
        progress(
            f"new labelled data landed ({len(later)} batches); the monitor judges the traffic once the canary starts"
        )
        monitor = Monitor(model)
        end, events = follow(model, since, progress, timeout=900, on_event=monitor.on_event, settled=monitor.settled)
        served = sum(traffic.result.statuses.values())
        errors = traffic.result.server_errors + traffic.result.connection_errors
    outcome = end or "no ending within 15 minutes"
    ended = [(e.occurred - since).total_seconds() for e in events if e.event == end]
    seconds = f": {ended[0]:.0f} s after the data landed" if ended else ""
    full = full_traffic_seconds(events, since) if end == "rollout.promoted" else None
    at_full = f" (all traffic on the challenger from {full:.0f} s, then its last bake)" if full is not None else ""
    progress(f"{outcome}{seconds}{at_full}; {served} requests served, {errors} failed")
    return _where_to_look(settings, endpoint) if end == "rollout.promoted" else 1


def _where_to_look(settings: Settings, endpoint: str) -> int:
    reports = settings.resolved_home / "reports" / settings.model_name / "drift-latest.html"
    print()
    print("Where to look:")
    print(
        f"  Prefect UI     {settings.prefect_url.removesuffix('/api')}/runs   (runs, deployments, automations, events)"
    )
    print(f"  MLflow UI      {settings.tracking_uri}/#/models/{settings.model_name}")
    features = len(settings.spec().feature_names)
    print(f'  endpoint       {endpoint}/invocations   (POST {{"dataframe_records": [{{...{features} features...}}]}})')
    if reports.exists():
        print(f"  drift report   {reports.as_uri()}")
    print("Stop everything with: make down (or: uv run mlops down)")
    return 0
