"""The serving image of a registered model version: build context, build, tags, push, registry record.

One image per model version, immutable: ``<repository>/<model>:<version>`` always holds the same
ONNX model (a tag that exists with a different model is refused), and ``:git-<sha>`` names the
server code it was built from. Re-releasing a version whose build context (model, server code,
requirements, base) is unchanged reuses the image instead of building a new one. Nothing is
written to the registry until the image is built (and pushed, when a registry is configured).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound
from prefect import task

from mlops.settings import Settings
from serving.bundle import ModelMetadata
from tasks.docker_engine import connect, explain
from tasks.events import run_logger
from tasks.lineage import PROJECT_ROOT, git_commit
from tasks.serving_bundle import fetch_bundle, resolve_version
from tasks.tracking import client

# The image's build inputs live with the deployment definitions; `make serving-requirements` writes the pins.
DOCKER_DIR = Path(__file__).resolve().parents[1] / "deployments" / "docker"
REQUIREMENTS = DOCKER_DIR / "serving-requirements.txt"
DOCKERFILE = DOCKER_DIR / "serving.Dockerfile"
SERVING_PACKAGE = PROJECT_ROOT / "serving"
LABEL = "mlops.model."
CONTEXT_LABEL = "mlops.image.context-sha256"
BASE_ID_LABEL = "mlops.image.base-id"
_NAME_INVALID = re.compile(r"[^a-z0-9._-]+")


class ImageBuildError(RuntimeError):
    """The image could not be built, tagged or pushed; the registry was left as it was."""


@dataclass(frozen=True)
class ImageSpec:
    """Where images go and what they are built from (infrastructure, from settings).

    Attributes:
        repository: Images are named ``<repository>/<model>``.
        registry: ``host[:port][/namespace]`` to push to; None builds locally only.
        base_image: Base of both build stages (a Debian-like Python 3.11).
        ca_certs: A ``.crt`` file or a folder of them that pip trusts in the build stage only.
        pip_index_url: Package index of the build (None: PyPI).
    """

    repository: str = "mlops"
    registry: str | None = None
    base_image: str = "python:3.11-slim"
    ca_certs: Path | None = None
    pip_index_url: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageSpec:
        return cls(
            repository=settings.image_repository,
            registry=settings.image_registry,
            base_image=settings.image_base,
            ca_certs=settings.image_ca_certs,
            pip_index_url=settings.image_pip_index_url,
        )

    def image_name(self, model_name: str) -> str:
        """``[registry/]repository/model``, with the model name made a valid Docker path component."""
        component = _NAME_INVALID.sub("-", model_name.lower()).strip("._-") or "model"
        return "/".join(part.strip("/") for part in (self.registry, self.repository, component) if part)


@dataclass(frozen=True)
class ServingImage:
    """A built (and maybe pushed) serving image of one model version.

    Attributes:
        reference: ``<name>:<version>``, the tag deployments run.
        tags: Every tag given to the image.
        image_id: The engine's content id (``sha256:...``).
        digest: ``<name>@sha256:...`` in the registry, once pushed; None for a local-only image.
        size_bytes: Uncompressed size as the engine reports it.
        build_seconds: Time to build (0 when an identical image was reused).
        metadata: The bundle baked in (model name, version, sha256, known answer).
        labels: The image's OCI and model labels.
    """

    reference: str
    tags: tuple[str, ...]
    image_id: str
    digest: str | None
    size_bytes: int
    build_seconds: float
    metadata: ModelMetadata
    labels: dict[str, str] = field(default_factory=dict)

    def registry_tags(self) -> dict[str, str]:
        """What the model version records about its image."""
        return {
            "image_ref": self.reference,
            "image_id": self.image_id,
            "image_digest": self.digest or "",
            "image_tags": ",".join(self.tags),
            "image_size_bytes": str(self.size_bytes),
            "image_built_at": self.labels.get("org.opencontainers.image.created", ""),
        }


def image_labels(
    metadata: ModelMetadata, version_tags: dict[str, str], spec: ImageSpec, commit: str, built_at: datetime
) -> dict[str, str]:
    """OCI annotations plus the model's identity: name, version, ONNX sha256, run, training lineage."""
    return {
        "org.opencontainers.image.title": f"{metadata.name} model server",
        "org.opencontainers.image.description": (
            f"ONNX server for {metadata.name} version {metadata.version} ({metadata.family or 'model'})"
        ),
        "org.opencontainers.image.version": metadata.version,
        "org.opencontainers.image.revision": commit,
        "org.opencontainers.image.created": built_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "org.opencontainers.image.base.name": spec.base_image,
        f"{LABEL}name": metadata.name,
        f"{LABEL}version": metadata.version,
        f"{LABEL}onnx-sha256": metadata.sha256,
        f"{LABEL}run-id": metadata.run_id,
        f"{LABEL}family": metadata.family,
        f"{LABEL}training-commit": version_tags.get("git_commit", ""),
        f"{LABEL}dataset-digest": version_tags.get("dataset_digest", ""),
    }


def ca_certificates(source: Path | None) -> list[Path]:
    """The ``.crt`` files named by ``source`` (a file, or a folder searched one level deep)."""
    if source is None:
        return []
    source = source.expanduser()
    if source.is_file():
        return [source]
    if source.is_dir():
        return sorted(path for path in source.glob("*.crt") if path.is_file())
    raise ImageBuildError(f"CA certificates {source} (MLOPS_IMAGE_CA_CERTS) is neither a file nor a folder")


def prepare_context(tracking_uri: str, model_uri: str, dest: Path, spec: ImageSpec) -> ModelMetadata:
    """Fill ``dest`` with the Dockerfile, pinned requirements, server code, the bundle and extra CA certs."""
    _, metadata = fetch_bundle(tracking_uri, model_uri, dest / "bundle")
    shutil.copyfile(DOCKERFILE, dest / "Dockerfile")
    shutil.copyfile(REQUIREMENTS, dest / "serving-requirements.txt")
    (dest / "serving").mkdir()
    for module in sorted(SERVING_PACKAGE.glob("*.py")):
        shutil.copyfile(module, dest / "serving" / module.name)
    certs = dest / "ca-certificates"
    certs.mkdir()
    (certs / "README").write_text("Extra CA certificates for the build stage only (MLOPS_IMAGE_CA_CERTS).\n")
    for index, cert in enumerate(ca_certificates(spec.ca_certs)):
        shutil.copyfile(cert, certs / f"{index:02d}-{cert.stem}.crt")
    return metadata


def context_digest(context: Path) -> str:
    """sha256 over every file of the build context (paths and bytes): equal digests build equal images."""
    digest = hashlib.sha256()
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        digest.update(path.relative_to(context).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def stream_lines(chunks: Iterable[dict[str, Any]], log: Any, what: str) -> Iterator[dict[str, Any]]:
    """Log every line the engine streams and raise on the first error it reports."""
    tail: list[str] = []
    for chunk in chunks:
        if "error" in chunk or "errorDetail" in chunk:
            message = chunk.get("error") or chunk["errorDetail"].get("message", "")
            last = "\n".join(tail[-15:])
            raise ImageBuildError(f"{what} failed: {message.strip()}\nlast lines:\n{last}")
        text = (chunk.get("stream") or chunk.get("status") or "").rstrip()
        if text:
            tail.append(text)
            for line in text.splitlines():
                log.info(line)
        yield chunk


def existing_image(engine: docker.DockerClient, reference: str) -> Any | None:
    try:
        return engine.images.get(reference)
    except ImageNotFound:
        return None


def build(
    engine: docker.DockerClient,
    context: Path,
    reference: str,
    spec: ImageSpec,
    labels: dict[str, str],
    log: Any,
    no_cache: bool = False,
    extra_args: dict[str, str] | None = None,
) -> str:
    """Build the context into ``reference`` and return the image id; build output goes to ``log``."""
    buildargs = {"BASE_IMAGE": spec.base_image, **(extra_args or {})}
    if spec.pip_index_url:
        buildargs["PIP_INDEX_URL"] = spec.pip_index_url
    image_id = ""
    try:
        chunks = engine.api.build(
            path=str(context),
            tag=reference,
            buildargs=buildargs,
            labels=labels,
            network_mode="host",
            rm=True,
            forcerm=True,
            pull=False,
            nocache=no_cache,
            decode=True,
        )
        for chunk in stream_lines(chunks, log, f"building {reference}"):
            image_id = (chunk.get("aux") or {}).get("ID", image_id)
    except ImageBuildError as error:
        if existing_image(engine, spec.base_image) is None:
            raise ImageBuildError(
                f"{error}\nThe base image {spec.base_image} is not in the engine and could not be pulled: pull or "
                "build it, or set MLOPS_IMAGE_BASE to one that exists (see README, 'Serving images')"
            ) from error
        raise
    except (APIError, DockerException) as error:
        raise ImageBuildError(f"building {reference} failed: {explain(error)}") from error
    if not image_id:
        image_id = engine.images.get(reference).id
    return str(image_id)


def push(engine: docker.DockerClient, reference: str, log: Any) -> str:
    """Push ``reference`` and return ``<name>@sha256:...``."""
    name, _, tag = reference.rpartition(":")
    digest = ""
    try:
        chunks = engine.api.push(name, tag=tag, stream=True, decode=True)
        for chunk in stream_lines(chunks, log, f"pushing {reference}"):
            digest = (chunk.get("aux") or {}).get("Digest", digest)
    except (APIError, DockerException) as error:
        raise ImageBuildError(f"pushing {reference} failed: {explain(error)}") from error
    if not digest:
        raise ImageBuildError(f"pushing {reference}: the registry returned no digest")
    return f"{name}@{digest}"


def reusable(found: dict[str, str], metadata: ModelMetadata, labels: dict[str, str], reference: str) -> bool:
    """Whether the image already tagged ``reference`` (with labels ``found``) is this very build.

    Raises:
        ImageBuildError: It holds another model: version tags are immutable.
    """
    if found.get(f"{LABEL}onnx-sha256") != metadata.sha256:
        raise ImageBuildError(
            f"{reference} already exists with a different model (onnx sha256 {found.get(f'{LABEL}onnx-sha256')}, "
            f"this version has {metadata.sha256}): version tags are immutable; remove the old image "
            f"(`docker rmi {reference}`) if the registry was reset"
        )
    same = ("org.opencontainers.image.base.name", BASE_ID_LABEL, CONTEXT_LABEL)
    return all(found.get(key) == labels[key] for key in same)


@task
def build_image(tracking_uri: str, model_uri: str, spec: ImageSpec, push_image: bool = True) -> ServingImage:
    """Build the serving image of a registered version, tag it, push it if a registry is set, record it.

    Args:
        tracking_uri: MLflow server holding the version and its ONNX bundle.
        model_uri: ``models:/<name>/<version>`` or ``models:/<name>@<alias>``.
        spec: Repository, registry, base image, CA certificates, package index.
        push_image: Push when ``spec.registry`` is set.

    Raises:
        EngineUnavailable: No Docker engine answers.
        ImageBuildError: The build, tag or push failed (the model version's tags are untouched).
    """
    log = run_logger(__name__)
    engine = connect()
    version = resolve_version(tracking_uri, model_uri)
    commit = git_commit()
    name = spec.image_name(version.name)
    reference = f"{name}:{version.version}"
    git_tag = f"git-{commit[:12]}{'-dirty' if commit.endswith('-dirty') else ''}"
    commit_tag = f"{name}:{git_tag}"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mlops-image-") as scratch:
        context = Path(scratch)
        metadata = prepare_context(tracking_uri, f"models:/{version.name}/{version.version}", context, spec)
        labels = image_labels(metadata, dict(version.tags), spec, commit, datetime.now(UTC))
        labels[CONTEXT_LABEL] = context_digest(context)
        base = existing_image(engine, spec.base_image)
        labels[BASE_ID_LABEL] = str(base.id) if base is not None else "pulled at build time"
        found = existing_image(engine, reference)
        if found is not None and reusable(found.labels or {}, metadata, labels, reference):
            log.info("%s already holds this model, code and base (%s); not rebuilt", reference, found.id)
            image_id, build_seconds = str(found.id), 0.0
        else:
            log.info("building %s from %s on %s", reference, model_uri, spec.base_image)
            image_id = build(engine, context, reference, spec, labels, log)
            build_seconds = time.perf_counter() - started
    image = engine.images.get(image_id)
    if not image.tag(name, git_tag):
        raise ImageBuildError(f"tagging {image_id} as {commit_tag} failed")
    digest = push(engine, reference, log) if spec.registry and push_image else None
    if digest:
        push(engine, commit_tag, log)
    built = ServingImage(
        reference=reference,
        tags=(reference, commit_tag),
        image_id=image_id,
        digest=digest,
        size_bytes=int(image.attrs.get("Size", 0)),
        build_seconds=build_seconds,
        metadata=metadata,
        labels=dict(image.labels or {}),
    )
    tracker = client(tracking_uri)
    for key, value in built.registry_tags().items():
        tracker.set_model_version_tag(version.name, str(version.version), key, value)
    log.info(
        "%s: %s, %.0f MB, built in %.1f s%s",
        version.name,
        reference,
        built.size_bytes / 1e6,
        build_seconds,
        f", pushed as {digest}" if digest else "",
    )
    return built
