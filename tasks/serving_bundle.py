"""Fetch the ONNX serving bundle of a registered model version to a local directory.

``python -m tasks.serving_bundle models:/diabetes@champion --dest DIR`` prints the directory.
The server itself never imports MLflow; it runs this in a subprocess when given a
``models:/`` URI, and image builds call :func:`fetch_bundle` directly.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from mlops.settings import get_settings
from serving.bundle import MODEL_FILE, BundleError, ModelMetadata, read_bundle, write_bundle
from tasks.tracking import client

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


class BundleNotFound(LookupError):
    """The model version does not exist or has no ONNX export."""


def model_uri(model_name: str, version_or_alias: str) -> str:
    """``models:/<name>/<n>`` for a version number, ``models:/<name>@<alias>`` for anything else."""
    if version_or_alias.isdigit():
        return f"models:/{model_name}/{version_or_alias}"
    return f"models:/{model_name}@{version_or_alias}"


def resolve_version(tracking_uri: str, model_uri: str) -> ModelVersion:
    """The registered version behind ``models:/<name>@<alias>`` or ``models:/<name>/<version>``.

    Raises:
        BundleNotFound: The URI is malformed or names no version.
    """
    match = MODEL_URI.match(model_uri)
    if match is None:
        raise BundleNotFound(
            f"{model_uri!r} is not a model URI; use models:/<name>@<alias> or models:/<name>/<version>"
        )
    tracker = client(tracking_uri)
    try:
        if match["alias"]:
            return tracker.get_model_version_by_alias(match["name"], match["alias"])
        return tracker.get_model_version(match["name"], match["version"])
    except MlflowException as error:
        raise BundleNotFound(f"{model_uri} does not resolve to a model version at {tracking_uri}: {error}") from error


def fetch_bundle(tracking_uri: str, model_uri: str, dest: Path) -> tuple[Path, ModelMetadata]:
    """Download the version's ONNX bundle into ``dest`` with the registry's name and version in its metadata.

    Raises:
        BundleNotFound: No such version, or it was registered without an ONNX export.
        BundleError: The downloaded file does not match the version's ``onnx_sha256`` tag.
    """
    version = resolve_version(tracking_uri, model_uri)
    source, expected = version.tags.get("onnx_uri"), version.tags.get("onnx_sha256")
    if not source or not expected:
        raise BundleNotFound(
            f"{version.name} version {version.version} has no ONNX export (tags onnx_uri/onnx_sha256 missing); "
            "it was registered before exports existed — retrain to get one"
        )
    tracker = client(tracking_uri)
    run_id, _, path = source.removeprefix("runs:/").partition("/")
    with tempfile.TemporaryDirectory() as scratch:
        downloaded = Path(tracker.download_artifacts(run_id, path, scratch))
        model_file, metadata = read_bundle(downloaded)
        if metadata.sha256 != expected:
            raise BundleError(
                f"{source} holds a model with sha256 {metadata.sha256}, but {version.name} version "
                f"{version.version} records {expected}"
            )
        registered = replace(metadata, name=version.name, version=str(version.version))
        write_bundle(dest, model_file.read_bytes(), registered)
    read_bundle(dest)
    return dest / MODEL_FILE, registered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.serving_bundle", description=__doc__)
    parser.add_argument("model_uri", help="models:/<name>@<alias> or models:/<name>/<version>")
    parser.add_argument("--dest", type=Path, required=True, help="directory to write model.onnx and metadata.json to")
    parser.add_argument("--tracking-uri", default=None, help="MLflow server (default: MLFLOW_TRACKING_URI / settings)")
    args = parser.parse_args(argv)
    tracking_uri = args.tracking_uri or get_settings().tracking_uri
    try:
        _, metadata = fetch_bundle(tracking_uri, args.model_uri, args.dest)
    except (BundleNotFound, BundleError) as error:
        print(f"cannot fetch {args.model_uri}: {error}", file=sys.stderr)
        return 2
    print(f"{args.dest} {metadata.name} version {metadata.version} sha256 {metadata.sha256}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
