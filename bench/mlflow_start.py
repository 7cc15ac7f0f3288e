"""The tracking server's start with MLflow 3's job runner (its default) and without it (our setting):
seconds until ``/health`` answers, and the processes it runs 5 s later.

Not a test: prints a table. Usage: ``uv run python bench/mlflow_start.py [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlflow_server import MlflowServerConfig, mlflow_server  # noqa: E402
from mlops.process import free_port  # noqa: E402


def one_start(job_execution: bool) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as root:
        server = mlflow_server(MlflowServerConfig.scratch(Path(root), free_port()))
        env = {**os.environ, **server.env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": str(job_execution).lower()}
        started = time.perf_counter()
        process = subprocess.Popen(
            list(server.command), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        while True:
            try:
                if httpx.get(server.url + server.health_path, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        ready = time.perf_counter() - started
        time.sleep(5)  # what it keeps starting after it answers
        group = subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True, text=True)
        processes = len(group.stdout.split())
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        return ready, processes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rows = [(label, one_start(label == "on")) for _ in range(args.rounds) for label in ("on", "off")]
    print(f"{'job runner':<11} {'ready s':>8} {'processes':>10}")
    for label, (ready, processes) in rows:
        print(f"{label:<11} {ready:8.1f} {processes:>10}")


if __name__ == "__main__":
    main()
