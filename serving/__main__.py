"""``python -m serving MODEL``: serve a bundle directory, or a registered version fetched first.

MODEL is a bundle directory (model.onnx + metadata.json) or ``models:/<name>@<alias>`` /
``models:/<name>/<version>``. A registry URI is fetched by ``python -m tasks.serving_bundle`` in a
separate process, so this process never imports MLflow. Flags override ``MLOPS_SERVING_*``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import uvicorn

from serving.app import create_app
from serving.bundle import BundleError
from serving.config import ConfigError, ServerConfig
from serving.http_limits import BoundedHttpProtocol
from serving.model import OnnxModel
from serving.worker import BUNDLE_ENV, configure_logging


def fetch(model_uri: str, dest: Path) -> Path:
    """Run the MLflow-side helper in a subprocess to fetch a registered version's bundle."""
    command = [sys.executable, "-m", "tasks.serving_bundle", model_uri, "--dest", str(dest)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BundleError(result.stderr.strip() or f"{' '.join(command)} exited with {result.returncode}")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    parser.add_argument("model", help="bundle directory, or models:/<name>@<alias> | models:/<name>/<version>")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--collect-dir", type=Path, default=None, help="write scored requests here (off by default)")
    parser.add_argument("--max-rows", type=int, default=None)
    parser.add_argument("--max-body-bytes", type=int, default=None)
    parser.add_argument("--bundle-dir", type=Path, default=None, help="where a models:/ URI is fetched to")
    parser.add_argument("--workers", type=int, default=None, help="worker processes sharing the port")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        config = ServerConfig.from_env(
            host=args.host,
            port=args.port,
            collect_dir=args.collect_dir,
            max_rows=args.max_rows,
            max_body_bytes=args.max_body_bytes,
            workers=args.workers,
        )
        bundle = Path(args.model)
        if args.model.startswith("models:/"):
            bundle = fetch(args.model, args.bundle_dir or Path(tempfile.mkdtemp(prefix="mlops-bundle-")))
        model = OnnxModel(bundle, intra_op_threads=config.threads).load()
    except (BundleError, ConfigError) as error:
        print(f"not serving: {error}", file=sys.stderr)
        return 2
    meta = model.metadata
    print(
        f"serving {meta.name} v{meta.version} on http://{config.host}:{config.port} "
        f"(pid {os.getpid()}, {config.workers} worker(s))",
        flush=True,
    )
    options: dict[str, Any] = {
        "host": config.host,
        "port": config.port,
        "log_level": config.log_level,
        "access_log": config.access_log,
        "timeout_graceful_shutdown": config.graceful_timeout,
        "server_header": False,
        "proxy_headers": False,
        "http": BoundedHttpProtocol,
    }
    if config.workers == 1:
        uvicorn.Server(uvicorn.Config(create_app(model, config), **options)).run()
        return 0
    with tempfile.TemporaryDirectory(prefix="mlops-metrics-") as scratch:
        shared = replace(config, metrics_dir=config.metrics_dir or Path(scratch))
        os.environ.update({**shared.to_env(), BUNDLE_ENV: str(bundle.resolve())})
        uvicorn.run("serving.worker:app", factory=True, workers=config.workers, **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
