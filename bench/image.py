"""Serving image figures: size, build time cold and with cache, container start to ready.

    uv run python bench/image.py [--starts 5]

Needs a Docker engine (``make engine`` then ``eval "$(.ci/docker-engine env)"`` on a machine without
one) and the base image in MLOPS_IMAGE_BASE. Starts its own MLflow server, trains two versions
with the real flow (first batch, then all batches), and builds their images:
- cold: version 1 with the engine's build cache bypassed (base image present, every step re-run,
  wheels downloaded again);
- cached: version 2, whose context differs only in the bundle (the pip layer is reused);
- start to ready: ``docker run`` until ``/v2/health/ready`` answers, median of --starts runs.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import docker
import httpx
from docker.errors import ImageNotFound

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from two_versions import two_versions

from mlops.process import free_port
from mlops.settings import get_settings
from tasks.docker_engine import connect
from tasks.image import CONTEXT_LABEL, ImageSpec, build, context_digest, image_labels, prepare_context
from tasks.lineage import git_commit


def timed_build(
    engine: docker.DockerClient, tracking_uri: str, name: str, version: str, spec: ImageSpec, no_cache: bool
) -> tuple[str, float]:
    reference = f"{spec.image_name(name)}:{version}"
    with tempfile.TemporaryDirectory() as scratch:
        context = Path(scratch)
        metadata = prepare_context(tracking_uri, f"models:/{name}/{version}", context, spec)
        labels = image_labels(metadata, {}, spec, git_commit(), datetime.now(UTC))
        labels[CONTEXT_LABEL] = context_digest(context)
        started = time.perf_counter()
        build(engine, context, reference, spec, labels, logging.getLogger("build"), no_cache=no_cache)
        return reference, time.perf_counter() - started


def start_to_ready(engine: docker.DockerClient, reference: str) -> float:
    port = free_port()
    started = time.perf_counter()
    container = engine.containers.run(
        reference,
        detach=True,
        network_mode="host",
        environment={"MLOPS_SERVING_HOST": "127.0.0.1", "MLOPS_SERVING_PORT": str(port)},
    )
    try:
        deadline = started + 60
        while time.perf_counter() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"{reference} not ready in 60 s")
    finally:
        container.remove(force=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()
    engine = connect()
    spec = ImageSpec.from_settings(get_settings())
    name = f"bench_{uuid.uuid4().hex[:6]}"
    with two_versions(name) as settings:
        tracking = settings.tracking_uri
        try:
            cold_ref, cold = timed_build(engine, tracking, name, "1", spec, no_cache=True)
            _, cached = timed_build(engine, tracking, name, "2", spec, no_cache=False)
            starts = [start_to_ready(engine, cold_ref) for _ in range(args.starts)]
            size = engine.images.get(cold_ref).attrs["Size"]
            bases = {}
            for base in (spec.base_image, "local/bookworm-base"):
                try:
                    bases[base] = engine.images.get(base).attrs["Size"]
                except ImageNotFound:
                    bases[base] = None
        finally:
            for image in engine.images.list(name=spec.image_name(name)):
                engine.images.remove(image.id, force=True)
    print(f"\nbase image: {spec.base_image}")
    print("| figure | value |\n|---|---|")
    print(f"| image size | {size / 1e6:.0f} MB |")
    for base, base_size in bases.items():
        print(f"| base {base} | {'absent' if base_size is None else f'{base_size / 1e6:.0f} MB'} |")
    print(f"| build, cold (no build cache) | {cold:.1f} s |")
    print(f"| build, cached (new model, same code) | {cached:.1f} s |")
    print(f"| container start to ready, median of {len(starts)} | {statistics.median(starts):.2f} s |")
    print(f"| start to ready, min / max | {min(starts):.2f} / {max(starts):.2f} s |")


if __name__ == "__main__":
    main()
