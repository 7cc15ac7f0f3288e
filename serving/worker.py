"""The app factory each worker process runs when the server starts with ``--workers`` > 1.

Workers are spawned by uvicorn's supervisor and rebuild their configuration from the
environment the parent set (``MLOPS_SERVING_*`` plus ``MLOPS_SERVING_BUNDLE``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from serving.app import ServingApp, create_app
from serving.config import ENV_PREFIX, ServerConfig
from serving.model import OnnxModel

BUNDLE_ENV = ENV_PREFIX + "BUNDLE"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


def app() -> ServingApp:
    configure_logging()
    config = ServerConfig.from_env()
    return create_app(OnnxModel(Path(os.environ[BUNDLE_ENV]), intra_op_threads=config.threads).load(), config)
