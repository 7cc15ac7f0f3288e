"""Several worker processes on one port: every worker answers, /metrics sums them, SIGTERM flushes them all."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from mlflow.pyfunc.scoring_server.client import ScoringServerClient

from mlops.process import free_port
from serving.collector import iter_collected
from tests.conftest import TINY_FEATURES, spawn_python, wait_ready

REQUESTS = 60


def test_two_workers_share_the_port_metrics_and_collection(tiny_bundle: Path, tiny_model: Any, tmp_path: Path) -> None:
    port, collected = free_port(), tmp_path / "collected"
    process = spawn_python(["-m", "serving", str(tiny_bundle), "--workers", "2", "--collect-dir", str(collected)], port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, f"{url}/v2/health/ready")
        # MLflow's own scoring-server client works unchanged (it sends a pandas dataframe_split).
        rows = pd.DataFrame([[1.0, 2.0, 3.0], [-1.0, 0.5, 40.0]], columns=list(TINY_FEATURES))
        mlflow_client = ScoringServerClient("127.0.0.1", port)
        mlflow_client.wait_server_ready(timeout=10)
        predictions = mlflow_client.invoke(rows).get_predictions()
        assert np.allclose(np.asarray(predictions).ravel(), tiny_model.predict(rows), rtol=0, atol=1e-9)
        for _ in range(REQUESTS - 2):  # a new connection each time, so the kernel spreads them over both workers
            answer = httpx.post(f"{url}/invocations", json={"instances": [[1.0, 2.0, 3.0]]})
            assert answer.status_code == 200
        time.sleep(2.5)  # workers publish their counters every second
        for _ in range(4):  # whichever worker answers, it reports the sum
            metrics = httpx.get(f"{url}/metrics").text
            scored = re.search(r'mlops_serving_rows_scored_total\{model="tiny",version="7"\} ([\d.]+)', metrics)
            assert scored is not None and float(scored[1]) == REQUESTS
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    rows = list(iter_collected(collected))
    assert len(rows) == REQUESTS
    writers = {path.name.split("-")[2] for path in collected.glob("requests-*.jsonl")}
    assert len(writers) == 2, f"expected both workers to have served and collected: {writers}\n{stderr[-2000:]}"
