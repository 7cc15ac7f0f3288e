"""Serving bundles, the model loader, server configuration, and what the serving package imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import serving
from serving.bundle import METADATA_FILE, MODEL_FILE, BundleError, ModelMetadata, read_bundle
from serving.config import ConfigError, ServerConfig
from serving.model import OnnxModel

FORBIDDEN = ("prefect", "mlflow", "sklearn", "great_expectations", "evidently", "skl2onnx", "pandas")


def test_the_server_and_router_never_import_the_heavy_stack() -> None:
    modules = sorted(path.stem for path in Path(serving.__file__).parent.glob("*.py"))
    assert {"app", "router", "upstream", "endpoint", "healthcheck"} <= set(modules)
    code = (
        f"import sys; [__import__('serving.' + m) for m in {modules!r}];"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r})))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_changed_model_file_is_refused(tiny_bundle: Path) -> None:
    model_file = tiny_bundle / MODEL_FILE
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    with pytest.raises(BundleError, match="refusing to serve it"):
        OnnxModel(tiny_bundle).load()


def test_a_bundle_without_metadata_is_refused(tiny_bundle: Path) -> None:
    (tiny_bundle / METADATA_FILE).unlink()
    with pytest.raises(BundleError, match=r"metadata\.json not found"):
        read_bundle(tiny_bundle)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda meta: meta.pop("sha256"), "lacks sha256"),
        (lambda meta: meta.update(format=99), "format 99"),
        (lambda meta: meta.update(features=[]), "features must be a non-empty list"),
    ],
)
def test_malformed_metadata_is_named(tiny_bundle: Path, change: object, message: str) -> None:
    path = tiny_bundle / METADATA_FILE
    meta = json.loads(path.read_text())
    change(meta)  # type: ignore[operator]
    path.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=message):
        read_bundle(tiny_bundle)


def test_metadata_must_match_the_graph(tiny_bundle: Path) -> None:
    path = tiny_bundle / METADATA_FILE
    meta = ModelMetadata.from_json(path.read_text())
    path.write_text(ModelMetadata(**{**meta.__dict__, "input_name": "features"}).to_json())
    with pytest.raises(BundleError, match="metadata expects only 'features'"):
        OnnxModel(tiny_bundle).load()


def test_model_is_ready_only_after_load_and_predicts_per_row(tiny_bundle: Path) -> None:
    model = OnnxModel(tiny_bundle)
    assert model.ready is False
    model.load()
    assert model.ready is True
    assert model.predict(np.zeros((4, 3))).shape == (4,)


def test_config_reads_environment_and_flags_override_it() -> None:
    env = {
        "MLOPS_SERVING_PORT": "9001",
        "MLOPS_SERVING_TOKEN": "t",
        "MLOPS_SERVING_COLLECT_DIR": "/tmp/x",
        "MLOPS_SERVING_ACCESS_LOG": "true",
        "MLOPS_SERVING_COLLECT_FILE_SECONDS": "2.5",
    }
    config = ServerConfig.from_env(env, max_rows=5, port=None)
    assert (config.port, config.token, config.collect_dir, config.access_log) == (9001, "t", Path("/tmp/x"), True)
    assert config.collect_file_seconds == 2.5 and config.max_rows == 5
    assert ServerConfig.from_env({"MLOPS_SERVING_TOKEN": ""}).token is None


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MLOPS_SERVING_PORT", "eighty", "MLOPS_SERVING_PORT='eighty'"),
        ("MLOPS_SERVING_ACCESS_LOG", "maybe", "expected true or false"),
        ("MLOPS_SERVING_WORKERS", "0", r"workers must be > 0 \(got 0\)"),
        ("MLOPS_SERVING_MAX_ROWS", "-5", r"max_rows must be > 0 \(got -5\)"),
        ("MLOPS_SERVING_PORT", "70000", "port must be 0-65535"),
    ],
)
def test_bad_config_values_are_named(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServerConfig.from_env({name: value})
