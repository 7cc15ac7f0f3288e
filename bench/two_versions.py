"""Shared by benchmarks: a scratch MLflow server and Prefect harness with a champion (v1) and a challenger (v2).

The champion is trained on the first default batch, the challenger on all four, by the real flow.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from mlflow_server import MlflowServerConfig, start_mlflow, stop_mlflow
from mlops.process import free_port
from mlops.settings import Settings, get_settings
from tasks.sample_data import land_batches


@contextmanager
def two_versions(name: str, **env: str) -> Iterator[Settings]:
    """Settings of a fresh home whose registry holds ``name`` v1 (champion) and v2 (challenger)."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.train import TrainParameters, train_flow

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "models" / "diabetes.yaml").read_text())
        (root / "models").mkdir()
        (root / "models" / f"{name}.yaml").write_text(yaml.safe_dump({**spec, "name": name}))
        config = MlflowServerConfig.scratch(root, free_port())
        start_mlflow(config)
        try:
            os.environ.update(
                {
                    "MLOPS_HOME": str(root / "home"),
                    "MLOPS_MODEL_NAME": name,
                    "MLOPS_MODELS_DIR": str(root / "models"),
                    "MLFLOW_TRACKING_URI": config.url,
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                    "DO_NOT_TRACK": "true",
                    **env,
                }
            )
            get_settings.cache_clear()
            settings = get_settings()
            with prefect_test_harness(server_startup_timeout=120):
                for batches in ([0], [1, 2, 3]):
                    land_batches(settings.landing_for(), batches)
                    train_flow(TrainParameters())
                yield settings
        finally:
            stop_mlflow(config)
