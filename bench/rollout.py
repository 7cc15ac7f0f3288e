"""Rollout timelines: one rollback and one promotion of a real challenger under steady load.

    uv run python bench/rollout.py [--bake 5] [--steps 10 25 50 100]

Trains champion v1 and challenger v2 against a scratch MLflow server, starts the endpoint with
v1, sends steady one-row traffic (4 concurrent clients on loopback), then releases v2 twice:
first with a chaos knob on the canary (half its answers are 500s) — rolled back — then as is —
promoted. Prints each step with its time since the release started, and the traffic seen.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from two_versions import two_versions

from cli.traffic import BackgroundTraffic
from flows.release import ReleaseParameters, release_flow
from mlops.process import free_port
from tasks.endpoint_admin import start_endpoint, stop_endpoint
from tasks.ingest import accepted_frame
from tasks.registry import CHALLENGER
from tasks.rollout import RolloutConfig
from tasks.targets import ProcessTarget
from tasks.tracking import client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bake", type=float, default=5.0, help="bake seconds per step")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 100])
    parser.add_argument("--min-requests", type=int, default=50)
    args = parser.parse_args()
    name = f"bench_{uuid.uuid4().hex[:6]}"
    with two_versions(name, MLOPS_ENDPOINT_PORT=str(free_port())) as settings:
        endpoint = start_endpoint(settings)
        try:
            config = RolloutConfig(steps=args.steps, bake_seconds=args.bake, min_requests=args.min_requests)
            release_flow(ReleaseParameters(version="1", image="never", rollout=config))  # v1 behind the endpoint
            frame = accepted_frame(settings.data_for())
            assert frame is not None
            rows = frame[settings.spec().feature_names].to_numpy().tolist()
            runs = [
                ("rollback (canary answers 500 to 30 % of requests)", {"MLOPS_SERVING_FAULT_ERROR_SHARE": "0.3"}),
                ("promotion", {}),
            ]
            for title, chaos in runs:
                client(settings.tracking_uri).set_registered_model_alias(name, CHALLENGER, "2")
                params = ReleaseParameters(
                    version=CHALLENGER, image="never", rollout=config.model_copy(update={"canary_env": chaos})
                )
                load = BackgroundTraffic(
                    f"{endpoint.url}/invocations",
                    lambda rng: {"instances": [rows[rng.randrange(len(rows))]]},
                    max_seconds=600,
                    concurrency=4,
                )
                started = time.perf_counter()
                with load:
                    outcome = release_flow(params)
                total = time.perf_counter() - started
                result = load.result
                print(f"\n## {title}: {outcome.rollout} in {total:.1f} s (release flow start to end)")
                print(
                    "| t end (s) | step | canary % | verdict | canary req / err / p99 | stable req / err / p99 | KS |"
                )
                print("|---|---|---|---|---|---|---|")
                elapsed = 0.0
                for step in outcome.steps:
                    elapsed += float(step["seconds"])
                    print(
                        f"| {elapsed:.1f} | {step['step']} | {step['canary weight %']} | {step['verdict']} | "
                        f"{step['canary req / err / p99']} | {step['stable req / err / p99']} | {step['KS']} |"
                    )
                print(f"why: {outcome.steps[-1]['why']}")
                print(
                    f"traffic: {result.requests} requests, by deployment {dict(result.deployments)}, "
                    f"5xx {result.server_errors}, connection errors {result.connection_errors}"
                )
        finally:
            target = ProcessTarget(settings.tracking_uri, settings.resolved_home)
            for deployment in endpoint.table().deployments:
                target.stop(deployment.name)
            stop_endpoint(settings)


if __name__ == "__main__":
    main()
