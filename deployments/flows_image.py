"""Build the flows image (``deployments/docker/flows.Dockerfile``): what flow runs on the Docker and
Kubernetes work pools run in.

The build context is a copy of what the image needs (pyproject.toml, uv.lock, README.md, the
packages and models/), laid out as in the project, plus the extra CA certificates of
``MLOPS_IMAGE_CA_CERTS`` (the build trusts them; the image keeps none). The base is
``MLOPS_IMAGE_BASE`` and the index ``MLOPS_IMAGE_PIP_INDEX_URL``, as for the serving images.

    python -m deployments.flows_image [--tag mlops-flows:dev]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

from mlops.settings import Settings, get_settings
from tasks.docker_engine import connect
from tasks.image import ImageSpec, build, ca_certificates
from tasks.lineage import git_commit

PROJECT = Path(__file__).resolve().parents[1]
DOCKERFILE = PROJECT / "deployments" / "docker" / "flows.Dockerfile"
FILES = ("pyproject.toml", "uv.lock", "README.md")
PACKAGES = ("flows", "tasks", "serving", "mlops", "mlflow_server", "deployments", "cli", "models")
CERTS = Path("deployments") / "docker" / "ca-certificates"
DEFAULT_TAG = "mlops-flows:dev"


def prepare_flows_context(dest: Path, spec: ImageSpec) -> Path:
    """Fill ``dest`` with what the flows image copies and the extra CA certificates; returns ``dest``."""
    for name in FILES:
        shutil.copyfile(PROJECT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in PACKAGES:
        shutil.copytree(PROJECT / package, dest / package, ignore=ignore)
    shutil.copyfile(DOCKERFILE, dest / "Dockerfile")
    for index, cert in enumerate(ca_certificates(spec.ca_certs)):
        shutil.copyfile(cert, dest / CERTS / f"{index:02d}-{cert.stem}.crt")
    return dest


def build_flows_image(settings: Settings, tag: str = DEFAULT_TAG, log: logging.Logger | None = None) -> str:
    """Build the flows image as ``tag`` on the engine at ``DOCKER_HOST``; returns its id.

    Raises:
        EngineUnavailable: No Docker engine answers.
        ImageBuildError: The build failed (the error names the last lines of its output).
    """
    spec = ImageSpec.from_settings(settings)
    engine = connect(timeout=600)
    with tempfile.TemporaryDirectory(prefix="mlops-flows-image-") as context:
        prepare_flows_context(Path(context), spec)
        labels = {"org.opencontainers.image.title": "mlops-flows"}
        # The commit the flows report as their code (tasks.lineage.git_commit): no .git in the image.
        commit = {"GIT_COMMIT": git_commit()}
        log = log or logging.getLogger("flows-image")
        return build(engine, Path(context), tag, spec, labels, log, extra_args=commit)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.flows_image", description=__doc__)
    parser.add_argument("--tag", default=DEFAULT_TAG, help=f"image reference (default {DEFAULT_TAG})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(build_flows_image(get_settings(), args.tag))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
