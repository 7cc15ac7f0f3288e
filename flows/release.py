"""Release a registered model version: build its serving image, then smoke-test it before any traffic.

``python -m flows.release [--version challenger]``. The canary rollout (next) continues from here.
Images are tagged ``<repository>/<model>:<version>`` and ``:git-<sha>``, pushed when
``MLOPS_IMAGE_REGISTRY`` is set, and recorded on the model version with the smoke test's verdict.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, Field

from mlops.settings import get_settings
from tasks.image import ImageSpec, build_image
from tasks.serving_bundle import model_uri
from tasks.smoke import SmokeConfig, SmokeTestError, record_smoke, smoke_test_image
from tasks.tracking import check_tracking_server, version_url


class ReleaseParameters(BaseModel):
    """Parameters of a release run (rendered as a form in the Prefect UI)."""

    version: str = Field("challenger", description="Version number, or alias (challenger, champion).")
    model_name: str | None = Field(None, description="Registered model name (default: MLOPS_MODEL_NAME).")
    push: bool = Field(True, description="Push the image when a registry is configured (MLOPS_IMAGE_REGISTRY).")
    smoke: SmokeConfig = Field(default_factory=SmokeConfig)


@dataclass(frozen=True)
class ReleaseOutcome:
    """A smoke-tested image of one model version.

    Attributes:
        model_name: Registered model name.
        version: The released version number.
        image: Reference deployments run (``<name>:<version>``).
        image_id: Engine content id.
        digest: Registry digest once pushed, else None.
        size_bytes: Image size.
        build_seconds: Build time (0 when an identical image was reused).
        seconds_to_ready: Container start to ready in the smoke test.
        message: One line for people.
        version_url: The version in the MLflow UI.
    """

    model_name: str
    version: str
    image: str
    image_id: str
    digest: str | None
    size_bytes: int
    build_seconds: float
    seconds_to_ready: float
    message: str
    version_url: str


@flow(name="release", log_prints=True)
def release_flow(params: ReleaseParameters | None = None) -> ReleaseOutcome:
    """Build the version's serving image and let it through only if the smoke test passes."""
    params = params or ReleaseParameters()
    settings = get_settings()
    logger = get_run_logger()
    name = params.model_name or settings.model_name
    tracking = settings.tracking_uri
    check_tracking_server(tracking)

    image = build_image(tracking, model_uri(name, params.version), ImageSpec.from_settings(settings), params.push)
    try:
        smoke = smoke_test_image(image, params.smoke)
    except SmokeTestError as error:
        record_smoke(tracking, image, None, str(error))
        raise
    record_smoke(tracking, image, smoke)
    version = image.metadata.version
    outcome = ReleaseOutcome(
        model_name=name,
        version=version,
        image=image.reference,
        image_id=image.image_id,
        digest=image.digest,
        size_bytes=image.size_bytes,
        build_seconds=round(image.build_seconds, 2),
        seconds_to_ready=round(smoke.seconds_to_ready, 2),
        message=f"{name} version {version}: image {image.reference} ({image.size_bytes / 1e6:.0f} MB); {smoke.summary}",
        version_url=version_url(tracking, name, version),
    )
    create_table_artifact(
        key=f"release-{name}".lower().replace("_", "-"),
        table=[{"field": key, "value": str(value)} for key, value in asdict(outcome).items()],
        description=f"Release of {name} version {version}",
    )
    logger.info("%s", outcome.message)
    return outcome


def main(argv: list[str] | None = None) -> int:
    """Release one version with defaults and print the outcome."""
    parser = argparse.ArgumentParser(prog="python -m flows.release", description=__doc__)
    parser.add_argument("--version", default="challenger", help="version number or alias (default: challenger)")
    parser.add_argument("--no-push", action="store_true", help="do not push even if a registry is configured")
    args = parser.parse_args(argv)
    try:
        outcome = release_flow(ReleaseParameters(version=args.version, push=not args.no_push))
    except Exception as error:  # the flow run already logged the traceback
        print(f"release failed: {error}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(outcome), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
