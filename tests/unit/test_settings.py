import subprocess
import sys
from pathlib import Path

from mlops.settings import Settings


def test_environment_overrides_each_setting(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    monkeypatch.setenv("MLOPS_MODEL_NAME", "houses")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.example:4200/api")
    monkeypatch.setenv("MLOPS_LANDING_URI", "s3://bucket/landing")
    settings = Settings()
    assert settings.model_name == "houses"
    assert settings.tracking_uri == "http://tracking.example:5000"
    assert settings.prefect_url == "http://prefect.example:4200/api"
    assert settings.landing == "s3://bucket/landing"
    assert settings.data == str(tmp_path / "data")
    assert settings.backend_store_uri == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"


def test_defaults_point_at_the_embedded_servers(monkeypatch) -> None:
    for name in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "MLOPS_MLFLOW_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.tracking_uri == "http://127.0.0.1:5000"
    assert settings.prefect_url == "http://127.0.0.1:4200/api"


def test_importing_the_code_does_nothing(tmp_path: Path) -> None:
    """No folders, no tracking URI, no server contact at import time."""
    code = (
        "import os, mlflow, flows.train, cli.main, mlflow_server, deployments.prefect_server, tasks.registry;"
        "assert not os.listdir('.'), os.listdir('.');"
        "assert not mlflow.tracking._tracking_service.utils._tracking_uri"
    )
    root = Path(__file__).resolve().parents[2]
    workdir = tmp_path / "work"
    workdir.mkdir()
    subprocess.run(
        [sys.executable, "-c", code],
        cwd=workdir,
        check=True,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home")},
    )
