"""Fixtures shared by every test tier: isolated settings, a real MLflow server, Prefect's harness."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from mlflow_server import MlflowServerConfig, start_mlflow, stop_mlflow
from mlops.process import free_port
from mlops.settings import Settings, get_settings
from tasks.sample_data import diabetes_batches

QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "GX_ANALYTICS_ENABLED": "false",
}


def pytest_configure(config: pytest.Config) -> None:
    os.environ.update(QUIET_ENV)


@pytest.fixture(scope="session")
def batches() -> list[pd.DataFrame]:
    """The four default diabetes batches."""
    return diabetes_batches()


SHIPPED_SPECS = Path(__file__).resolve().parents[1] / "models"


def wine_frame() -> pd.DataFrame:
    """scikit-learn's wine table with a string column and gaps added; the label ``cultivar`` as strings."""
    from sklearn.datasets import load_wine

    data = load_wine(as_frame=True)
    rng = np.random.default_rng(3)
    frame = data.frame.drop(columns=["target"]).iloc[:, :6].copy()
    frame["region"] = np.array(["hill", "valley", "coast"], dtype=object)[rng.integers(0, 3, len(frame))]
    frame.loc[rng.random(len(frame)) < 0.05, "alcohol"] = np.nan
    frame["cultivar"] = np.array(["barolo", "grignolino", "barbera"])[data.target]
    return frame


def wine_sections() -> dict[str, Any]:
    """The spec sections of :func:`wine_frame` as a multiclass model (for :func:`write_spec`)."""
    features: list[dict[str, Any]] = [{"name": c, "kind": "numeric"} for c in wine_frame().columns[:6]]
    features[0]["nullable"] = True
    features.append({"name": "region", "kind": "categorical"})
    return {
        "task": "multiclass",
        "target": {"column": "cultivar"},
        "features": features,
        "training": {"families": ["logistic_regression"]},
        "promotion": {"primary": "roc_auc", "tolerances": {}},
        "data": {},
    }


def write_spec(models_dir: Path, name: str, base: str = "diabetes", **sections: Any) -> Path:
    """A copy of the shipped spec ``base`` named ``name`` (sections replaced) in ``models_dir``."""
    import yaml

    raw = yaml.safe_load((SHIPPED_SPECS / f"{base}.yaml").read_text())
    raw.update(name=name, **sections)
    models_dir.mkdir(parents=True, exist_ok=True)
    path = models_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def own_prefect_env(root: Path) -> dict[str, str]:
    """Environment of a test's own ``prefect server start``: its client home under ``root``, no analytics, and
    no scheduler (scheduled runs, such as the landing check every 5 minutes, would race a test's story)."""
    return {
        "PREFECT_HOME": str(root / "prefect-client"),
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "true",
    }


def model_env(root: Path, prefix: str = "model", base: str = "diabetes") -> dict[str, str]:
    """A home, a models folder and a model of their own (``<prefix>_<random>``, a copy of the ``base`` spec)."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    write_spec(root / "models", name, base)
    return {"MLOPS_HOME": str(root / "home"), "MLOPS_MODELS_DIR": str(root / "models"), "MLOPS_MODEL_NAME": name}


@pytest.fixture
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings whose home, data and model (spec and name) belong to this test alone."""
    for key, value in model_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def _scratch_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServerConfig]:
    root: Path = tmp_path_factory.mktemp("mlflow")
    config = MlflowServerConfig.scratch(root, free_port())
    assert start_mlflow(config) is True
    yield config
    stop_mlflow(config)


@pytest.fixture(scope="session")
def mlflow_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServerConfig]:
    """A real `mlflow server` on SQLite in a temp dir, artifacts proxied, for the whole session."""
    yield from _scratch_mlflow(tmp_path_factory)


@pytest.fixture(scope="module")
def own_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServerConfig]:
    """A server like ``mlflow_config`` for one module alone: its tests may stop it and start it again."""
    yield from _scratch_mlflow(tmp_path_factory)


TINY_FEATURES = ("x1", "x2", "x3")


@pytest.fixture(scope="session")
def tiny_model() -> Any:
    """A scaler + ridge pipeline on three synthetic features: small and exact in ONNX."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(200, 3)) * [1, 10, 100], columns=list(TINY_FEATURES))
    y = 3 * x["x1"] - 0.5 * x["x2"] + 0.01 * x["x3"] + rng.normal(size=200)
    return Pipeline([("scale", StandardScaler()), ("model", Ridge(alpha=0.1))]).fit(x, y)


TINY_ROWS = [[1.0, 2.0, 3.0], [-1.0, 0.5, 40.0], [0.0, -20.0, 100.0]]


def write_tiny_bundle(directory: Path, model: Any, version: str = "7", name: str = "tiny") -> Path:
    """A serving bundle of a model (regressor or classifier) on ``TINY_FEATURES``, with a known answer for
    ``TINY_ROWS``."""
    from sklearn.base import is_classifier

    from serving.bundle import ModelMetadata, write_bundle
    from tasks.export import known_answer
    from tasks.onnx_convert import LABEL, MATRIX_INPUT, OUTPUT_NAME, numeric_columns, to_onnx

    converted = to_onnx(model, numeric_columns(TINY_FEATURES))
    onnx_bytes = converted.model.SerializeToString()
    rows = pd.DataFrame(TINY_ROWS, columns=list(TINY_FEATURES))
    classifier = is_classifier(model)
    metadata = ModelMetadata(
        name,
        version,
        TINY_FEATURES,
        MATRIX_INPUT,
        LABEL if classifier else OUTPUT_NAME,
        hashlib.sha256(onnx_bytes).hexdigest(),
        run_id="r1",
        example=known_answer(model, rows, tolerance=1e-6 if classifier else 1e-9, classifier=classifier),
        task="binary" if classifier else "regression",
        outputs=converted.outputs,
        classes=tuple(model.classes_.tolist()) if classifier else (),
    )
    return write_bundle(directory, onnx_bytes, metadata)


def write_tumours_bundle(directory: Path, family: str = "logistic_regression") -> tuple[Path, Any]:
    """The example classifier (strings, gaps, a flag) trained on its example table as a serving bundle with its
    known answer, and the fitted model."""
    from mlops.spec import load_spec
    from serving.bundle import write_bundle
    from tasks.export import bundle_metadata, known_answer
    from tasks.features import build_estimator
    from tasks.onnx_convert import to_onnx
    from tasks.sample_data import tumours_frame
    from tasks.train import TrainingSet

    data = TrainingSet(tumours_frame(), load_spec("tumours", SHIPPED_SPECS))
    x_train, y_train, x_holdout, _ = data.split()
    model = build_estimator(data.spec, family).fit(x_train, y_train)
    converted = to_onnx(model, data.input_columns)
    onnx_bytes = converted.model.SerializeToString()
    example = known_answer(model, x_holdout, tolerance=1e-6, classifier=True)
    metadata = bundle_metadata(
        data, converted, onnx_bytes, family, tuple(model.classes_.tolist()), version="3", example=example
    )
    return write_bundle(directory, onnx_bytes, metadata), model


@pytest.fixture
def tiny_bundle(tiny_model: Any, tmp_path: Path) -> Path:
    """A serving bundle of ``tiny_model`` named ``tiny`` version 7, with a known answer for three rows."""
    return write_tiny_bundle(tmp_path / "bundle", tiny_model)


def wait_ready(process: subprocess.Popen[str], url: str, timeout: float = 60.0) -> None:
    """Poll ``url`` until it answers 200; fail with the process's stderr if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, (process.communicate()[1] or "(its output was not kept)")[-2000:]
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} not answering in {timeout:.0f} s"
        time.sleep(0.1)


def spawn_python(args: list[str], port: int, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``python <args> --port <port>`` from the project root, its output piped (read it with ``communicate``)."""
    return subprocess.Popen(
        [sys.executable, *args, "--port", str(port)],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@contextmanager
def python_server(args: list[str], health: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """``python <args> --port <free port>`` on loopback until ``health`` answers 200; yields its URL, then stops it."""
    port = free_port()
    process = spawn_python(args, port, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, f"{url}{health}")
        yield url
    finally:
        if process.poll() is None:
            process.terminate()
            process.communicate(timeout=30)


def serving_process(bundle: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    """``python -m serving BUNDLE`` on a free loopback port, ready; a context manager yielding its URL."""
    return python_server(["-m", "serving", str(bundle), *args], "/v2/health/ready", env)
