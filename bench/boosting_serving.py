"""Serving XGBoost and LightGBM: this ONNX server vs ``mlflow models serve`` of the same model in MLflow's own
``xgboost`` / ``lightgbm`` flavour, one-row requests, side by side in one run. Prints markdown tables; not a test.

    .venv/bin/python bench/boosting_serving.py [--duration 10] [--repeat 3] [--concurrency 1 32]
        [--libraries xgboost lightgbm]

Each library's regressor is fitted on the diabetes table (10 numbers, models/diabetes.yaml, the middle of the
family's default grid, seed 42; bare, as trees need no scaling) and written twice: ``mlflow.<library>.save_model``
(served with ``mlflow models serve --env-manager local``, 1 worker, the virtualenv's ``bin`` on ``PATH``) and an
ONNX bundle as training writes it (served with ``python -m serving``, 1 worker). Both listen on 127.0.0.1 only and
get the same MLflow ``dataframe_split`` POST to ``/invocations`` (the table's first row) from wrk (1 thread, on the
same 2 cores), every run bounded by ``--duration``; each figure is the median of ``--repeat`` runs. Before the
load both servers' answers to that row are compared with the library's own ``predict``. Needs ``wrk``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import DIABETES_FEATURES, middle_params, table_spec, write_model_bundle
from bench.serving import WRK_SCRIPT, server, wrk
from mlops.process import free_port
from tasks.features import family_estimator
from tasks.sample_data import diabetes_frame
from tasks.train import TrainingSet

LIBRARIES = ("xgboost", "lightgbm")
MLFLOW, ONNX = "mlflow models serve", "onnx server"


def write_models(library: str, workdir: Path) -> tuple[Path, Path, str, float]:
    """The library's diabetes regressor in its MLflow flavour and as an ONNX bundle; a request body for the first
    row and the library's answer to it."""
    import mlflow.lightgbm
    import mlflow.xgboost
    from mlflow.models import infer_signature

    spec = table_spec("diabetes")
    data = TrainingSet(diabetes_frame(), spec)
    x, y = data.typed[DIABETES_FEATURES], data.frame[spec.target.column]
    model = family_estimator(library, classification=False, seed=spec.training.seed)
    model.set_params(**middle_params(spec, library)).fit(x, y)
    flavour: Any = mlflow.xgboost if library == "xgboost" else mlflow.lightgbm
    mlflow_dir = workdir / f"mlflow-{library}"
    flavour.save_model(model, str(mlflow_dir), signature=infer_signature(x, model.predict(x)))
    bundle, _ = write_model_bundle(model, data, library, workdir)
    body = json.dumps({"dataframe_split": {"columns": DIABETES_FEATURES, "data": [x.iloc[0].tolist()]}})
    return mlflow_dir, bundle, body, float(model.predict(x.iloc[:1])[0])


def answer(name: str, url: str, body: str) -> float:
    reply = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=30)
    if reply.status_code != 200:
        raise SystemExit(f"{name} at {url} answered {reply.status_code}: {reply.text[:300]}")
    return float(np.asarray(reply.json()["predictions"], dtype=float).ravel()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--repeat", type=int, default=3, help="wrk runs per server and concurrency (median shown)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--libraries", nargs="+", choices=LIBRARIES, default=list(LIBRARIES))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: install it (Debian: apt-get install wrk)")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    results: dict[tuple[str, str, int], dict[str, float]] = {}
    answers: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        for library in args.libraries:
            mlflow_dir, bundle, body, expected = write_models(library, workdir)
            script = workdir / f"{library}.lua"
            script.write_text(WRK_SCRIPT.format(body=body))
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            mlflow_serve = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(mlflow_dir), "--env-manager",
                            "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]  # fmt: skip
            onnx_serve = [sys.executable, "-m", "serving", str(bundle), "--host", "127.0.0.1", "--port", str(port)]
            said = {}
            for name, command, health in ((MLFLOW, mlflow_serve, f"{base}/ping"),
                                          (ONNX, onnx_serve, f"{base}/v2/health/ready")):  # fmt: skip
                with server(command, health, env):
                    said[name] = answer(name, f"{base}/invocations", body)
                    for concurrency in args.concurrency:
                        runs = [
                            wrk(f"{base}/invocations", script, concurrency, args.duration) for _ in range(args.repeat)
                        ]
                        results[library, name, concurrency] = {
                            k: float(np.median([r[k] for r in runs])) for k in runs[0]
                        }
            answers.append(
                f"- {library}: {library} predict {expected:.6f}, mlflow {said[MLFLOW]:.6f}, onnx {said[ONNX]:.6f} "
                f"(|onnx - {library}| {abs(said[ONNX] - expected):.1e})"
            )
    print(f"One-row POST /invocations (diabetes), wrk -t1, {args.duration} s per run, median of {args.repeat}\n")
    print("| model | server | c | req/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|---|")
    for (library, name, concurrency), figures in results.items():
        print(
            f"| {library} | {name} | {concurrency} | {figures['rps']:,.0f} | {figures['p50']:.2f} | "
            f"{figures['p99']:.2f} | {figures['errors']:.0f} |"
        )
    print("\n| model | c | onnx / mlflow req/s | p50 ms mlflow → onnx | p99 ms mlflow → onnx |\n|---|---|---|---|---|")
    for library in args.libraries:
        for concurrency in args.concurrency:
            theirs, ours = results[library, MLFLOW, concurrency], results[library, ONNX, concurrency]
            print(
                f"| {library} | {concurrency} | {ours['rps'] / theirs['rps']:.1f}x | {theirs['p50']:.2f} → "
                f"{ours['p50']:.2f} | {theirs['p99']:.2f} → {ours['p99']:.2f} |"
            )
    print("\nThe first row's answer, before the load:\n" + "\n".join(answers))


if __name__ == "__main__":
    main()
