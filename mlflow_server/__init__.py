"""The MLflow tracking and registry server: embedded SQLite by default, PostgreSQL + S3 for teams."""

from mlflow_server.server import MlflowServerConfig, mlflow_server, start_mlflow, stop_mlflow

__all__ = ["MlflowServerConfig", "mlflow_server", "start_mlflow", "stop_mlflow"]
