"""The ``mlops`` command: bring the embedded stack up and down, land data, train, release, promote, demo."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cli.stack import deploy, down, up
from mlops.settings import Settings, get_settings


def _configure_clients(settings: Settings) -> None:
    """Point MLflow and Prefect clients at the embedded servers unless the environment chose others."""
    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.tracking_uri)
    os.environ.setdefault("PREFECT_API_URL", settings.prefect_url)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    get_settings.cache_clear()


def score(
    model: str | None,
    source: str,
    output: str | None,
    version: str,
    chunk_rows: int | None,
    dask_address: str | None = None,
) -> Any:
    from flows.batch_score import BatchScoreParameters, batch_score_flow

    options = {"chunk_rows": chunk_rows} if chunk_rows else {}
    params = BatchScoreParameters(
        input=source, output=output, version=version, model_name=model, dask_address=dask_address, **options
    )
    return batch_score_flow(params)


def register(model: str | None, args: argparse.Namespace) -> Any:
    """Register a model trained elsewhere (pickles are loaded here, on this machine, after a warning)."""
    from flows.register import RegisterParameters, register_flow
    from tasks.outside import trusting_pickles

    params = RegisterParameters(
        model=model,
        source=args.source,
        source_tracking_uri=args.source_tracking_uri,
        reference=args.reference,
        expected=args.expected,
        force=args.force,
        reason=args.reason or "",
    )
    with trusting_pickles():
        return register_flow(params)


def monitor(model: str | None, minutes: float) -> Any:
    from flows.monitor import MonitorParameters, monitor_flow

    return monitor_flow(MonitorParameters(window_minutes=minutes, model_name=model))


def land(settings: Settings, model: str | None, batches: list[int]) -> list[str]:
    from tasks.sample_data import land_batches

    spec = settings.spec(model)
    written = land_batches(spec.landing_uri(settings.landing), batches, spec=spec)
    for uri in written:
        print(f"landed {uri}")
    return written


def ship_requests(settings: Settings, model: str | None, folder: Path | None, every: float | None) -> None:
    """Ship the model's finished collection files to ``MLOPS_REQUESTS_URI``: once, or every ``every`` seconds."""
    import time

    from serving.collector import requests_dir
    from tasks.ship_requests import ship_finished

    if not settings.requests_uri:
        raise ValueError("MLOPS_REQUESTS_URI is not set: name the object storage to ship to (s3://bucket/requests)")
    name = model or settings.model_name
    local = folder or requests_dir(settings.resolved_home, name)
    target = settings.requests_for(name)
    missing = f"{local} does not exist: no server has collected there (serve with --collect-dir, or give --from)"
    if every is None and not local.is_dir():
        raise FileNotFoundError(missing)
    waiting = False
    while True:
        absent = not local.is_dir()
        if absent != waiting:  # a sidecar may start before its servers: said when it changes, not every round
            waiting = absent
            print(f"waiting: {missing}" if waiting else f"{local} exists now", file=sys.stderr, flush=True)
        shipped = ship_finished(local, target)
        if shipped.files or shipped.failed:
            print(f"shipped {shipped.files} file(s), {shipped.bytes} bytes, from {local} to {target}", flush=True)
        for file, why in shipped.failed.items():
            print(f"kept {file} for the next round: {why}", file=sys.stderr, flush=True)
        if every is None:
            return
        time.sleep(every)


def train(model: str | None, family: str | None, seed: int | None) -> Any:
    from flows.train import parameters, train_flow

    return train_flow(parameters(model, family, seed))


def demo(settings: Settings, family: str | None) -> int:
    from cli.demo import run_demo

    return run_demo(settings, family)


def serve(settings: Settings, model: str | None, model_uri: str | None, extra: list[str]) -> int:
    """Replace this process with the ONNX server for a registered version (default: the champion)."""
    name = model or settings.model_name
    uri = model_uri or f"models:/{name}@champion"
    home = settings.resolved_home
    from serving.collector import requests_dir

    command = [sys.executable, "-m", "serving", uri, "--collect-dir", str(requests_dir(home, name))]
    if uri.startswith("models:/"):  # fetched to <home>/bundles/<name>-<alias or version>
        folder = re.sub(r"[@/]", "-", uri.removeprefix("models:/"))
        command += ["--bundle-dir", str(home / "bundles" / folder)]
    sys.stdout.flush()
    os.execv(sys.executable, [*command, *extra])
    return 0  # not reached: execv replaces the process


def release(
    model: str | None, version: str, push: bool, rollout: bool, bake: float | None, min_requests: int | None
) -> Any:
    from flows.release import ReleaseParameters, release_flow

    params = ReleaseParameters(version=version, push=push, model_name=model, image_only=not rollout)
    changes = {"bake_seconds": bake, "min_requests": min_requests}
    chosen = {key: value for key, value in changes.items() if value is not None}
    if rollout and chosen:
        spec_rollout = get_settings().spec(model).rollout
        params.rollout = type(spec_rollout).model_validate({**spec_rollout.model_dump(), **chosen})
    return release_flow(params)


def models(settings: Settings) -> list[dict[str, Any]]:
    """Every model with a spec: task, champion, challenger, endpoint URL and last training run."""
    from mlops.spec import SpecError, spec_names
    from tasks.endpoint_admin import endpoint_url
    from tasks.tracking import alias_version, last_run

    rows: list[dict[str, Any]] = []
    for name in spec_names(settings.specs_dir):
        try:
            spec = settings.spec(name)
        except SpecError as error:
            rows.append({"model": name, "error": str(error)})
            continue
        run = last_run(settings.tracking_uri, spec.experiment)
        rows.append(
            {
                "model": name,
                "task": spec.task.value,
                "champion": alias_version(settings.tracking_uri, name, "champion"),
                "challenger": alias_version(settings.tracking_uri, name, "challenger"),
                "endpoint": endpoint_url(settings, name),
                "last_run": f"{run['run']} {run['status'].lower()} {run['started']} {run['outcome']}".strip()
                if run
                else None,
            }
        )
    return rows


def print_models(rows: list[dict[str, Any]]) -> None:
    columns = ("model", "task", "champion", "challenger", "endpoint", "last_run")
    table = [[str(row.get(column) or "-") for column in columns] for row in rows if "error" not in row]
    widths = [max(len(column), *(len(line[i]) for line in table)) for i, column in enumerate(columns)]
    print("  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True)))
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    for row in rows:
        if "error" in row:
            print(f"{row['model']}: {row['error']}", file=sys.stderr)


def promote(model_name: str, version: str, reason: str) -> None:
    from tasks.registry import promote as promote_task

    promotion = promote_task(get_settings().tracking_uri, model_name, version, reason)
    print(json.dumps(asdict(promotion), indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlops", description="The model lifecycle on Prefect + MLflow.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser(
        "demo", help="the whole loop on the default data: champion, drift, retraining, canary, promotion"
    )
    demo_parser.add_argument(
        "--family", default=None, help="the first champion's family (default: the spec's first, ridge for diabetes)"
    )
    commands.add_parser("up", help="start (or reuse) the MLflow and Prefect servers")
    commands.add_parser("models", help="the models: task, champion, challenger, endpoint, last training run")
    commands.add_parser("down", help="stop the servers this project started")
    deploy_parser = commands.add_parser(
        "deploy", help="start the process worker, register prefect.yaml's deployments, apply the automations"
    )
    deploy_parser.add_argument(
        "--release-params", type=json.loads, default=None, help="parameters of automated releases (JSON)"
    )
    score_parser = commands.add_parser("score", help="batch-score a CSV/Parquet file or folder with onnxruntime")
    score_parser.add_argument("input", help="file or folder")
    score_parser.add_argument("output", nargs="?", default=None, help="default: <home>/batch/output/...")
    score_parser.add_argument("--version", default="champion", help="number or alias (champion)")
    score_parser.add_argument("--chunk-rows", type=int, default=None, help="rows per chunk and part (50000)")
    score_parser.add_argument(
        "--dask", default=None, help="score each file as a task on this Dask scheduler (default: MLOPS_DASK_ADDRESS)"
    )
    monitor_parser = commands.add_parser("monitor", help="judge the last window of served requests once")
    monitor_parser.add_argument("--minutes", type=float, default=60.0, help="window length (default 60)")
    land_parser = commands.add_parser("land", help="land batches of the model's example data in its landing folder")
    land_parser.add_argument("batches", nargs="*", type=int, default=[0, 1, 2, 3], help="batch indices (0-3)")
    watch_parser = commands.add_parser(
        "watch-landing", help="announce new batches (data.landed) seconds after they land, until stopped"
    )
    watch_parser.add_argument("--every", type=float, default=2.0, help="seconds between looks (default 2)")
    watch_parser.add_argument("--health-port", type=int, default=None, help="answer GET /health on this port")
    ship_parser = commands.add_parser(
        "ship-requests", help="upload the finished collection files of this host to MLOPS_REQUESTS_URI"
    )
    ship_parser.add_argument("--from", dest="folder", type=Path, default=None, help="default: <home>/requests/<model>")
    ship_parser.add_argument("--every", type=float, default=None, help="seconds between rounds (default: once)")
    train_parser = commands.add_parser("train", help="run the training flow once")
    train_parser.add_argument("--family", default=None, help="train this family only (default: the spec's)")
    train_parser.add_argument("--seed", type=int, default=None, help="default: the spec's")
    serve_parser = commands.add_parser("serve", help="serve a registered version with the ONNX server")
    serve_parser.add_argument("model_uri", nargs="?", default=None, help="default: models:/<MLOPS_MODEL_NAME>@champion")
    for flag, kind in (("--host", str), ("--port", int), ("--workers", int)):
        serve_parser.add_argument(flag, type=kind, default=None, help="passed to python -m serving")
    release_parser = commands.add_parser("release", help="image + smoke test, then canary rollout of a version")
    release_parser.add_argument("version", nargs="?", default="challenger", help="number or alias (challenger)")
    release_parser.add_argument("--no-push", action="store_true", help="never push, even with MLOPS_IMAGE_REGISTRY")
    release_parser.add_argument("--no-rollout", action="store_true", help="stop after the image")
    release_parser.add_argument("--bake", type=float, default=None, help="seconds per canary step (default 30)")
    release_parser.add_argument(
        "--min-requests", type=int, default=None, help="canary requests per step for a verdict (default 30)"
    )
    trace_parser = commands.add_parser(
        "trace", help="from a request id (served or batch row) to the model version, its inputs, outputs and lineage"
    )
    trace_parser.add_argument("request_id", help="the x-request-id of a served request, or <input stem>:<row>")
    trace_parser.add_argument(
        "--batch-dir", action="append", type=Path, default=[], help="a batch output folder outside <home>/batch/output"
    )
    register_parser = commands.add_parser(
        "register", help="register a model trained elsewhere (ONNX, skops, joblib/pickle, an MLflow model)"
    )
    register_parser.add_argument("source", help="a .onnx/.skops/.joblib/.pkl file, runs:/..., models:/..., a folder")
    register_parser.add_argument(
        "--source-tracking-uri", default=None, help="the MLflow server a runs:/ or models:/ source is on"
    )
    register_parser.add_argument("--reference", default=None, help="CSV/Parquet rows to check and monitor it on")
    register_parser.add_argument("--expected", default=None, help="CSV/Parquet of rows and the answers it must give")
    register_parser.add_argument("--force", action="store_true", help="register even if it is not better")
    register_parser.add_argument("--reason", default=None, help="why (recorded on the version; needed with --force)")
    promote_parser = commands.add_parser("promote", help="make a registered version the champion")
    promote_parser.add_argument("version")
    promote_parser.add_argument("--reason", required=True)
    for command in (
        score_parser,
        monitor_parser,
        ship_parser,
        watch_parser,
        land_parser,
        train_parser,
        serve_parser,
        release_parser,
        promote_parser,
        trace_parser,
        register_parser,
    ):
        command.add_argument("--model", default=None, help="the model (its spec's name; default: MLOPS_MODEL_NAME)")
    args = parser.parse_args(argv)

    settings = get_settings()
    if args.command in (
        "demo",
        "train",
        "promote",
        "serve",
        "release",
        "deploy",
        "monitor",
        "score",
        "models",
        "trace",
        "watch-landing",
        "register",
    ):
        _configure_clients(settings)
        settings = get_settings()
    try:
        if hasattr(args, "model"):
            settings.spec(args.model)  # a missing or bad spec is refused before any server is contacted
        if args.command == "demo":
            return demo(settings, args.family)
        if args.command == "serve":
            flags = {"--host": args.host, "--port": args.port, "--workers": args.workers}
            return serve(
                settings,
                args.model,
                args.model_uri,
                [str(x) for k, v in flags.items() if v is not None for x in (k, v)],
            )
        if args.command == "up":
            up(settings)
        elif args.command == "models":
            print_models(models(settings))
        elif args.command == "down":
            down(settings)
        elif args.command == "deploy":
            deploy(settings, args.release_params)
        elif args.command == "score":
            print(
                json.dumps(
                    asdict(score(args.model, args.input, args.output, args.version, args.chunk_rows, args.dask)),
                    indent=2,
                )
            )
        elif args.command == "monitor":
            print(json.dumps(asdict(monitor(args.model, args.minutes)), indent=2))
        elif args.command == "watch-landing":
            from flows.landing import watch_landing

            if args.health_port is not None:
                from deployments.landing_watcher import HEALTH
                from mlops.process import serve_health

                serve_health(args.health_port, HEALTH)
            watch_landing(args.every, args.model)
        elif args.command == "ship-requests":
            ship_requests(settings, args.model, args.folder, args.every)
        elif args.command == "land":
            land(settings, args.model, args.batches)
        elif args.command == "train":
            print(json.dumps(asdict(train(args.model, args.family, args.seed)), indent=2))
        elif args.command == "release":
            outcome = release(
                args.model, args.version, not args.no_push, not args.no_rollout, args.bake, args.min_requests
            )
            print(json.dumps(asdict(outcome), indent=2))
        elif args.command == "register":
            outcome = register(args.model, args)
            print(json.dumps(asdict(outcome), indent=2))
            return 0 if outcome.status == "registered" else 3
        elif args.command == "promote":
            promote(args.model or settings.model_name, args.version, args.reason)
        elif args.command == "trace":
            from tasks.trace import trace

            found = trace(args.request_id, settings.resolved_home, settings.tracking_uri, args.model, args.batch_dir)
            print(found.to_json())
    except Exception as error:  # a CLI reports the failure in one line; flows keep their tracebacks in logs
        print(f"mlops {args.command}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
