"""Release a registered model version: image + smoke test, then a canary rollout behind the endpoint.

``python -m flows.release [--version challenger] [--no-rollout]``.

1. **Image** (where a Docker engine answers, or always with ``image=always``): build the version's
   serving image, tag and record it, smoke-test it in a container (``tasks.image``, ``tasks.smoke``).
2. **Rollout** (``tasks.rollout``): the endpoint's router is started or reused, the champion's
   deployment reconciled, the version started as a canary and moved through the weight steps;
   promoted to ``champion`` if every step passes, rolled back otherwise.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, Field

from flows.run_once import print_outcome
from mlops.settings import Settings, get_settings
from tasks.docker_engine import EngineUnavailable, connect
from tasks.endpoint_admin import start_endpoint
from tasks.events import artifact_key
from tasks.image import ImageSpec, ServingImage, build_image
from tasks.rollout import (
    RolloutConfig,
    RolloutOutcome,
    StepReport,
    Window,
    bake_step,
    deployment_name,
    promote_canary,
    reconcile_endpoint,
    rollback_canary,
    shadow_phase,
    start_canary,
)
from tasks.serving_bundle import model_uri, resolve_version
from tasks.smoke import SmokeConfig, SmokeTestError, record_smoke, smoke_test_image
from tasks.targets import DeploymentTarget, DockerTarget, ProcessTarget
from tasks.tracking import check_tracking_server, version_url


class ReleaseParameters(BaseModel):
    """Parameters of a release run (rendered as a form in the Prefect UI)."""

    version: str = Field("challenger", description="Version number, or alias (challenger, champion).")
    model_name: str | None = Field(None, description="Registered model name (default: MLOPS_MODEL_NAME).")
    image: Literal["auto", "always", "never"] = Field(
        "auto", description="Build + smoke-test the image: where an engine answers (auto), always, or never."
    )
    push: bool = Field(True, description="Push the image when a registry is configured (MLOPS_IMAGE_REGISTRY).")
    smoke: SmokeConfig = Field(default_factory=SmokeConfig)
    rollout: RolloutConfig | None = Field(
        None, description="Replaces the model spec's rollout section for this run (default: the spec's)."
    )
    compare_predictions: bool | None = Field(
        None, description="Overrides the rollout's compare_predictions (automated releases after drift: false)."
    )
    image_only: bool = Field(False, description="Stop after the image: no rollout.")


@dataclass(frozen=True)
class ReleaseOutcome:
    """What a release did.

    Attributes:
        model_name: Registered model name.
        version: The released version number.
        message: One line for people.
        version_url: The version in the MLflow UI.
        image: Image reference (None when no image was built).
        image_id: Engine content id.
        digest: Registry digest once pushed.
        size_bytes: Image size.
        build_seconds: Build time (0 when an identical image was reused).
        seconds_to_ready: Container start to ready in the smoke test.
        rollout: ``promoted``, ``rolled_back``, ``nothing_to_do``, or None without a rollout.
        champion: The champion at the end.
        steps: The rollout's steps with their figures.
    """

    model_name: str
    version: str
    message: str
    version_url: str
    image: str | None = None
    image_id: str | None = None
    digest: str | None = None
    size_bytes: int = 0
    build_seconds: float = 0.0
    seconds_to_ready: float = 0.0
    rollout: str | None = None
    champion: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)


def engine_answers() -> bool:
    try:
        connect(timeout=10)
    except EngineUnavailable:
        return False
    return True


def deployment_target(config: RolloutConfig, settings: Settings, canary: str) -> DeploymentTarget:
    env = {canary: config.canary_env} if config.canary_env else {}
    if config.target == "docker":
        return DockerTarget(settings.tracking_uri, env, home=settings.resolved_home)
    return ProcessTarget(settings.tracking_uri, settings.resolved_home, env)


@flow(name="release", log_prints=True)
def release_flow(params: ReleaseParameters | None = None) -> ReleaseOutcome:
    """Build and smoke-test the version's image, then roll it out as a canary (promote or roll back)."""
    params = params or ReleaseParameters()
    settings = get_settings()
    logger = get_run_logger()
    name = params.model_name or settings.model_name
    tracking = settings.tracking_uri
    check_tracking_server(tracking)
    version = str(resolve_version(tracking, model_uri(name, params.version)).version)

    config = None if params.image_only else (params.rollout or settings.spec(name).rollout)
    if config is not None and params.compare_predictions is not None:
        config = config.model_copy(update={"compare_predictions": params.compare_predictions})
    needs_image = config is not None and config.target == "docker"
    image: ServingImage | None = None
    seconds_to_ready = 0.0
    if params.image == "always" or needs_image or (params.image == "auto" and engine_answers()):
        image = build_image(tracking, model_uri(name, version), ImageSpec.from_settings(settings), params.push)
        try:
            smoke = smoke_test_image(image, params.smoke)
        except SmokeTestError as error:
            record_smoke(tracking, image, None, str(error))
            raise
        record_smoke(tracking, image, smoke)
        seconds_to_ready = smoke.seconds_to_ready
        logger.info("%s", smoke.summary)
    else:
        logger.info("no Docker engine answers (or image=never): no image built; the rollout runs processes")

    rollout = roll_out(settings, name, version, config, image) if config is not None else None
    parts = [f"{name} version {version}"]
    if image is not None:
        parts.append(f"image {image.reference} ({image.size_bytes / 1e6:.0f} MB, smoke-tested)")
    if rollout is not None:
        parts.append(rollout.message)
    outcome = ReleaseOutcome(
        model_name=name,
        version=version,
        message="; ".join(parts),
        version_url=version_url(tracking, name, version),
        image=image.reference if image else None,
        image_id=image.image_id if image else None,
        digest=image.digest if image else None,
        size_bytes=image.size_bytes if image else 0,
        build_seconds=round(image.build_seconds, 2) if image else 0.0,
        seconds_to_ready=round(seconds_to_ready, 2),
        rollout=rollout.status if rollout else None,
        champion=rollout.champion if rollout else None,
        steps=rollout.steps if rollout else [],
    )
    create_table_artifact(
        key=artifact_key("release", name),
        table=[{"field": key, "value": str(value)} for key, value in asdict(outcome).items() if key != "steps"],
        description=f"Release of {name} version {version}",
    )
    logger.info("%s", outcome.message)
    return outcome


def roll_out(
    settings: Settings, name: str, version: str, config: RolloutConfig, image: ServingImage | None = None
) -> RolloutOutcome:
    """The canary part of the flow: reconcile, canary, steps, then promote or roll back."""
    tracking = settings.tracking_uri
    endpoint = start_endpoint(settings, name, image.reference if image else None)
    target = deployment_target(config, settings, deployment_name(name, version))
    champion, _ = reconcile_endpoint(endpoint, target, tracking, name)
    if version == champion:
        return RolloutOutcome("nothing_to_do", name, version, champion, f"version {version} is the champion already")
    shadow_seconds = config.shadow_for(settings.spec(name).task.is_classification)
    try:
        canary = start_canary(endpoint, target, tracking, name, version, champion, shadow=shadow_seconds > 0)
    except SmokeTestError as error:  # recorded as a rollback by the task: the canary never took traffic
        return RolloutOutcome("rolled_back", name, version, champion, f"rolled back before any traffic: {error}")
    reports: list[StepReport] = []
    failed: StepReport | None = None
    if shadow_seconds > 0:
        reports.append(shadow_phase(endpoint, canary, config, shadow_seconds))
        failed = None if reports[-1].passed else reports[-1]
    reference = Window(0, 0, 0.0, 0.0)
    for step, weight in enumerate(config.steps, start=1):
        if failed is not None:
            break
        report, reference = bake_step(endpoint, canary, step, weight, reference, config)
        reports.append(report)
        failed = None if report.passed else report
    if failed is not None:
        reason = rollback_canary(endpoint, target, tracking, canary, failed)
        status, champion, message = "rolled_back", canary.stable_version, f"rolled back: {reason}"
    else:
        champion = promote_canary(endpoint, target, tracking, canary, reports)
        status, message = "promoted", f"promoted to champion after {len(reports)} steps"
    rows = [report.row() for report in reports]
    create_table_artifact(
        key=artifact_key("rollout", name),
        table=rows,
        description=f"Canary rollout of {name} version {version}: {status}",
    )
    return RolloutOutcome(status, name, version, champion, message, rows)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    """Release one version with defaults and print the outcome."""
    parser = argparse.ArgumentParser(prog="python -m flows.release", description=__doc__)
    parser.add_argument("--version", default="challenger", help="version number or alias (default: challenger)")
    parser.add_argument("--no-push", action="store_true", help="do not push even if a registry is configured")
    parser.add_argument("--no-rollout", action="store_true", help="stop after the image")
    args = parser.parse_args(argv)
    params = ReleaseParameters(version=args.version, push=not args.no_push, image_only=args.no_rollout)
    return print_outcome(lambda: release_flow(params), "release")


if __name__ == "__main__":
    sys.exit(main())
