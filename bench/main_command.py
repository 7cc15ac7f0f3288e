"""Time the main job (`mlops demo`) on the embedded defaults, cold and warm, in an isolated home.

Not a test: prints a table. Usage: ``uv run python bench/main_command.py``.
Cold = new home (new SQLite stores, servers, worker, deployments and automations; first champion;
drifted traffic, new data, monitor, retraining, canary, promotion — every step line with its time);
warm = the same command again (everything reused, the story already told).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlops.process import free_port  # noqa: E402

STEP = re.compile(r"^\[\s*([\d.]+)s\] (.*)$")


def run(env: dict[str, str], *args: str) -> tuple[float, list[tuple[float, str]]]:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"mlops {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    steps = [(float(m[1]), m[2][:200]) for line in result.stdout.splitlines() if (m := STEP.match(line))]
    return elapsed, steps


def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        env = {
            **os.environ,
            "MLOPS_HOME": home,
            "MLOPS_MLFLOW_PORT": str(free_port()),
            "MLOPS_PREFECT_PORT": str(free_port()),
            "MLOPS_WORKER_PORT": str(free_port()),
            "MLOPS_WATCHER_PORT": str(free_port()),
            "MLOPS_ENDPOINT_PORT": str(free_port()),
        }
        for name in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
            env.pop(name, None)
        try:
            rows = []
            for label in ("cold", "warm"):
                elapsed, steps = run(env, "demo")
                rows += [(label, at, step) for at, step in steps] + [(label, elapsed, "whole command (wall clock)")]
        finally:
            run(env, "down")
    print(f"{'run':<5} {'at s':>7}  step")
    for label, at, step in rows:
        print(f"{label:<5} {at:7.1f}  {step}")


if __name__ == "__main__":
    main()
