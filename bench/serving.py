"""Serving benchmark: this ONNX server vs ``mlflow models serve`` on the same model, plus in-process figures.

Not a test: prints tables. Needs ``wrk`` (Debian: ``apt-get install wrk``). Usage::

    uv run python bench/serving.py [--duration 10] [--repeat 3] [--concurrency 1 8 32]

1. HTTP: one-row MLflow ``dataframe_split`` POSTs to ``/invocations`` with wrk (1 thread, on
   the same 2 cores as the server), bounded by ``--duration`` per run: ``mlflow models serve
   --env-manager local`` with 1 and 2 workers, this server, this server with request collection
   on, and 2 workers with collection; then the endpoint router (``serving.router``) in front of
   1 worker, and of 2 workers with collection. Each figure is the median of ``--repeat`` runs: on a
   shared 2-core machine single runs vary by ±20 %.
2. In process: scikit-learn ``predict`` vs onnxruntime per model family and batch size.
3. Cold start (process start to ``/v2/health/ready`` = 200) and RSS of the server.
4. The example classifier (models/tumours.yaml: strings, integers, a flag, numbers, gaps), one row:
   ``mlflow models serve`` of the scikit-learn pipeline vs this server on ``/invocations`` (labels),
   v2 JSON (label + probabilities) and v2 binary tensor data (as ``tritonclient.http`` sends it).
   ``--classifier-only`` runs this table alone.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlops.process import free_port  # noqa: E402
from mlops.spec import REGRESSION_FAMILIES, load_spec  # noqa: E402
from serving.bundle import ModelMetadata, write_bundle  # noqa: E402
from serving.model import open_session  # noqa: E402
from tasks.export import measure_latency  # noqa: E402
from tasks.features import build_estimator  # noqa: E402
from tasks.onnx_convert import MATRIX_INPUT, OUTPUT_NAME, numeric_columns, to_onnx  # noqa: E402
from tasks.sample_data import diabetes_frame, tumours_frame  # noqa: E402

MLFLOW, MLFLOW_2 = "mlflow models serve", "mlflow models serve -w 2"
ONNX, ONNX_COLLECT, ONNX_2 = "onnx server", "onnx server + collection", "onnx, 2 workers + collection"
ROUTED, ROUTED_2 = "router -> onnx", "router -> onnx 2w + collection"
FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{body}'
"""
# A body of any bytes (the binary extension's), read from a file, with its headers.
WRK_FILE_SCRIPT = """
wrk.method = "POST"
local f = assert(io.open("{path}", "rb"))
wrk.body = f:read("*all")
f:close()
{headers}
"""
LATENCY = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def fitted(family: str) -> tuple[object, pd.DataFrame]:
    frame = diabetes_frame()
    model = build_estimator(load_spec("diabetes", ROOT / "models"), family).fit(frame[FEATURES], frame["target"])
    return model, frame


def write_models(workdir: Path) -> tuple[Path, Path, str]:
    """A ridge pipeline saved as an MLflow model and as an ONNX bundle; returns both dirs and a request body."""
    import mlflow.sklearn
    from mlflow.models import infer_signature

    model, frame = fitted("ridge")
    x = frame[FEATURES]
    mlflow_dir = workdir / "mlflow-model"
    mlflow.sklearn.save_model(model, str(mlflow_dir), signature=infer_signature(x, model.predict(x)))  # type: ignore[attr-defined]
    onnx_bytes = to_onnx(model, numeric_columns(FEATURES)).model.SerializeToString()

    bundle = write_bundle(
        workdir / "bundle",
        onnx_bytes,
        ModelMetadata(
            "diabetes", "1", tuple(FEATURES), MATRIX_INPUT, OUTPUT_NAME, hashlib.sha256(onnx_bytes).hexdigest()
        ),
    )
    row = x.iloc[0].tolist()
    body = json.dumps({"dataframe_split": {"columns": FEATURES, "data": [row]}})
    return mlflow_dir, bundle, body


def rss_mb(pid: int) -> float:
    total = 0.0
    for child in [pid, *_children(pid)]:
        try:
            text = Path(f"/proc/{child}/status").read_text()
        except FileNotFoundError:
            continue
        match = re.search(r"VmRSS:\s+(\d+) kB", text)
        total += int(match[1]) / 1024 if match else 0
    return total


def _children(pid: int) -> list[int]:
    result = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    kids = [int(line) for line in result.stdout.split()]
    return kids + [grandchild for kid in kids for grandchild in _children(kid)]


@contextmanager
def server(command: list[str], health: str, env: dict[str, str]) -> Iterator[tuple[float, float]]:
    """Start a server; yield (seconds to healthy, RSS MB once healthy); stop it."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        deadline = started + 120
        while True:
            if process.poll() is not None:
                raise SystemExit(
                    f"{command[:4]} exited: {process.stderr.read().decode()[-2000:] if process.stderr else ''}"
                )
            try:
                if httpx.get(health, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() > deadline:
                raise SystemExit(f"{command[:4]} not healthy within 120 s")
            time.sleep(0.05)
        yield time.perf_counter() - started, rss_mb(process.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        process.wait(30)
        _wait_port_free(health)


def _wait_port_free(url: str, timeout: float = 20.0) -> None:
    """Until nothing of the stopped server (e.g. a worker it forked) still listens where ``url`` points."""
    parsed = urlparse(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex((parsed.hostname or "127.0.0.1", parsed.port or 80)) != 0:
                return
        time.sleep(0.1)


def wrk(url: str, script: Path, concurrency: int, duration: int) -> dict[str, float]:
    result = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=True,
    )
    out = result.stdout
    latencies = {int(m[1]): float(m[2]) * UNITS[m[3]] for m in LATENCY.finditer(out)}
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    return {
        "rps": rate,
        "p50": latencies.get(50, float("nan")),
        "p99": latencies.get(99, float("nan")),
        "errors": errors,
    }


def http_table(args: argparse.Namespace, workdir: Path) -> None:
    mlflow_dir, bundle, body = write_models(workdir)
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT.format(body=body))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    port = free_port()
    mlflow_serve = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        str(mlflow_dir),
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    onnx_serve = [sys.executable, "-m", "serving", str(bundle), "--port", str(port)]
    collect = ["--collect-dir", str(workdir / "collected")]
    # The endpoint router on `port`, in front of a model server on its own port.
    behind = free_port()
    model_server = [sys.executable, "-m", "serving", str(bundle), "--port", str(behind)]
    router = [
        sys.executable,
        "-m",
        "serving.router",
        "--model",
        "bench",
        "--port",
        str(port),
        "--deployment",
        f"stable=http://127.0.0.1:{behind}@100:1",
    ]
    ready, behind_ready = f"http://127.0.0.1:{port}/v2/health/ready", f"http://127.0.0.1:{behind}/v2/health/ready"
    targets = [
        (MLFLOW, [([*mlflow_serve, "-w", "1"], f"http://127.0.0.1:{port}/ping")]),
        (MLFLOW_2, [([*mlflow_serve, "-w", "2"], f"http://127.0.0.1:{port}/ping")]),
        (ONNX, [(onnx_serve, ready)]),
        (ONNX_COLLECT, [([*onnx_serve, *collect], ready)]),
        (ONNX_2, [([*onnx_serve, *collect, "--workers", "2"], ready)]),
        (ROUTED, [(model_server, behind_ready), (router, ready)]),
        (ROUTED_2, [([*model_server, *collect, "--workers", "2"], behind_ready), (router, ready)]),
    ]  # fmt: skip
    results: dict[tuple[str, int], dict[str, float]] = {}
    starts: list[tuple[str, float, float]] = []
    for name, stack in targets:
        with ExitStack() as running:
            for command, health in stack:
                cold, rss = running.enter_context(server(command, health, env))
            starts.append((name, cold, rss))
            for concurrency in args.concurrency:
                runs = [
                    wrk(f"http://127.0.0.1:{port}/invocations", script, concurrency, args.duration)
                    for _ in range(args.repeat)
                ]
                results[(name, concurrency)] = {key: float(np.median([run[key] for run in runs])) for key in runs[0]}
    print(
        f"\nHTTP, one-row POST /invocations, wrk -t1, {args.duration} s per run, median of {args.repeat} "
        "(req/s · p50 ms · p99 ms · errors)"
    )
    print(f"{'server':<30} {'c':>3} {'req/s':>9} {'p50':>8} {'p99':>8} {'errors':>7}")
    for (name, concurrency), figures in results.items():
        print(
            f"{name:<30} {concurrency:>3} {figures['rps']:>9.0f} {figures['p50']:>8.2f} {figures['p99']:>8.2f} "
            f"{figures['errors']:>7.0f}"
        )
    top = max(args.concurrency)
    for ours, theirs in (
        (ONNX, MLFLOW), (ONNX_COLLECT, MLFLOW), (ONNX_2, MLFLOW_2), (ROUTED, MLFLOW), (ROUTED_2, MLFLOW),
        (ROUTED_2, MLFLOW_2),
    ):  # fmt: skip
        ratio = results[(ours, top)]["rps"] / results[(theirs, top)]["rps"]
        print(f"{ours} / {theirs} at c={top}: {ratio:.1f}x")
    low = min(args.concurrency)
    added = results[(ROUTED, low)]["p50"] - results[(ONNX, low)]["p50"]
    print(f"router added p50 at c={low}: {added:.3f} ms (router -> onnx minus onnx direct)")
    cost = 1 - results[(ONNX_COLLECT, top)]["rps"] / results[(ONNX, top)]["rps"]
    print(f"collection cost at c={top} (1 worker): {cost:.1%} of throughput")
    print("\nCold start (process start to healthy) and RSS once healthy")
    for name, cold, rss in starts:
        print(f"{name:<30} {cold:6.2f} s {rss:8.1f} MB")


def inprocess_table() -> None:
    print("\nIn process, median µs per call (scikit-learn vs onnxruntime, 1 intra-op thread)")
    print(f"{'family':<18} {'rows':>6} {'sklearn':>10} {'onnx':>10} {'speed-up':>9}")
    for family in REGRESSION_FAMILIES:
        model, frame = fitted(family)
        converted = to_onnx(model, numeric_columns(FEATURES))
        inference = open_session(converted.model.SerializeToString())
        figures = measure_latency(inference, converted, model, frame[FEATURES], [1, 100, 10_000], 0.5)
        for rows in (1, 100, 10_000):
            sk, ox = figures[f"sklearn.{rows}"], figures[f"onnx.{rows}"]
            print(f"{family:<22} {rows:>6} {sk:>10.1f} {ox:>10.1f} {sk / ox:>8.1f}x")


def write_classifier(workdir: Path) -> tuple[Path, Path, dict[str, tuple[bytes, dict[str, str]]]]:
    """The example classifier as an MLflow model and an ONNX bundle; request bodies for one typed row."""
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from tasks.export import input_schema
    from tasks.onnx_convert import LABEL
    from tasks.train import TrainingSet, trusted_types

    spec = load_spec("tumours", ROOT / "models")
    data = TrainingSet(tumours_frame(), spec)
    x, y = data.typed, data.frame[spec.target.column]
    model = build_estimator(spec, "logistic_regression").fit(x, y)
    mlflow_dir = workdir / "mlflow-classifier"
    signature = infer_signature(x, model.predict(x))
    mlflow.sklearn.save_model(model, str(mlflow_dir), signature=signature, skops_trusted_types=trusted_types(model))
    converted = to_onnx(model, data.input_columns)
    onnx_bytes = converted.model.SerializeToString()
    metadata = ModelMetadata(
        spec.name, "1", tuple(spec.feature_names), "", LABEL, hashlib.sha256(onnx_bytes).hexdigest(),
        task=spec.task.value, inputs=tuple(input_schema(spec, converted, x)), outputs=converted.outputs,
        classes=tuple(model.classes_.tolist()),
    )  # fmt: skip
    bundle = write_bundle(workdir / "classifier-bundle", onnx_bytes, metadata)
    row = x.iloc[0].tolist()
    columns = list(spec.feature_names)
    split = json.dumps({"dataframe_split": {"columns": columns, "data": [row]}}).encode()
    text = {c.column for c in converted.columns if c.type == "string"}
    tensors = [
        {"name": c, "shape": [1], "datatype": "BYTES" if c in text else "FP64", "data": [v]}
        for c, v in zip(columns, row, strict=True)
    ]
    v2_json = json.dumps({"inputs": tensors}).encode()
    chunks, header_tensors = [], []
    for tensor in tensors:
        value = tensor["data"][0]
        text_value = str(value).encode()
        chunk = (len(text_value).to_bytes(4, "little") + text_value) if tensor["datatype"] == "BYTES" else (
            np.array([value], dtype="<f8").tobytes()
        )  # fmt: skip
        chunks.append(chunk)
        header_tensors.append({**{k: tensor[k] for k in ("name", "shape", "datatype")},
                               "parameters": {"binary_data_size": len(chunk)}})  # fmt: skip
    head = json.dumps({"inputs": header_tensors, "parameters": {"binary_data_output": True}}).encode()
    bodies = {
        "/invocations": (split, {"Content-Type": "application/json"}),
        "v2 JSON": (v2_json, {"Content-Type": "application/json"}),
        "v2 binary": (
            head + b"".join(chunks),
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))},
        ),
    }
    return mlflow_dir, bundle, bodies


def classifier_table(args: argparse.Namespace, workdir: Path) -> None:
    mlflow_dir, bundle, bodies = write_classifier(workdir)
    scripts = {}
    for name, (content, headers) in bodies.items():
        path = workdir / f"{name.replace(' ', '-').strip('/')}.body"
        path.write_bytes(content)
        lines = "\n".join(f'wrk.headers["{key}"] = "{value}"' for key, value in headers.items())
        script = workdir / f"{path.stem}.lua"
        script.write_text(WRK_FILE_SCRIPT.format(path=path, headers=lines))
        scripts[name] = script
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    mlflow_serve = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(mlflow_dir), "--env-manager",
                    "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]  # fmt: skip
    onnx_serve = [sys.executable, "-m", "serving", str(bundle), "--port", str(port)]
    infer = f"{base}/v2/models/tumours/infer"
    runs = [
        (MLFLOW, mlflow_serve, f"{base}/ping", [("/invocations", f"{base}/invocations")]),
        (ONNX, onnx_serve, f"{base}/v2/health/ready",
         [("/invocations", f"{base}/invocations"), ("v2 JSON", infer), ("v2 binary", infer)]),
    ]  # fmt: skip
    results: dict[tuple[str, str, int], dict[str, float]] = {}
    body: str
    for name, command, health, targets in runs:
        with server(command, health, env):
            for body, url in targets:
                answer = httpx.post(url, content=bodies[body][0], headers=bodies[body][1], timeout=10)
                if answer.status_code != 200:
                    raise SystemExit(f"{name} refused the {body} body: {answer.status_code} {answer.text[:300]}")
                for concurrency in args.concurrency:
                    measured = [wrk(url, scripts[body], concurrency, args.duration) for _ in range(args.repeat)]
                    results[(name, body, concurrency)] = {
                        key: float(np.median([run[key] for run in measured])) for key in measured[0]
                    }
    print(
        f"\nThe example classifier (10 typed columns: 2 strings, gaps), one row, wrk -t1, {args.duration} s per run, "
        f"median of {args.repeat}"
    )
    print(f"{'server':<22} {'request':<14} {'c':>3} {'req/s':>9} {'p50':>8} {'p99':>8} {'errors':>7}")
    for (name, body, concurrency), figures in results.items():
        print(
            f"{name:<22} {body:<14} {concurrency:>3} {figures['rps']:>9.0f} {figures['p50']:>8.2f} "
            f"{figures['p99']:>8.2f} {figures['errors']:>7.0f}"
        )
    for concurrency in args.concurrency:
        theirs = results[(MLFLOW, "/invocations", concurrency)]
        for body in ("/invocations", "v2 binary"):
            ours = results[(ONNX, body, concurrency)]
            print(
                f"onnx {body} / mlflow /invocations at c={concurrency}: {ours['rps'] / theirs['rps']:.1f}x req/s, "
                f"p99 {ours['p99']:.2f} vs {theirs['p99']:.2f} ms"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeat", type=int, default=3, help="wrk runs per server and concurrency (median shown)")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--classifier-only", action="store_true", help="only the example classifier's table")
    args = parser.parse_args()
    if not args.skip_http and shutil.which("wrk") is None:
        raise SystemExit("wrk not found: install it (Debian: apt-get install wrk) or pass --skip-http")
    np.random.seed(0)
    if not args.skip_http:
        with tempfile.TemporaryDirectory() as workdir:
            if not args.classifier_only:
                http_table(args, Path(workdir))
            classifier_table(args, Path(workdir))
    if not args.classifier_only:
        inprocess_table()


if __name__ == "__main__":
    main()
