"""Memory of the model server and the router under a header flood (issue 15's figure).

    uv run python bench/header_flood.py [--megabytes 256]

Starts a model server (a small ridge on three features) and a router in front of it on loopback,
then, on one connection to each, sends a request line followed by ``--megabytes`` of header lines
(1 KB each) as fast as the peer reads them. Prints, per process: bytes it accepted before closing
the connection, its answer, and its resident memory (VmRSS) before and after. Before the bounds
(``serving/http_limits.py``) the same flood grew the server to 731 MB and the router to 702 MB.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import Ridge

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlops.process import free_port
from serving.bundle import ModelMetadata, write_bundle
from tasks.onnx_convert import MATRIX_INPUT, OUTPUT_NAME, numeric_columns, to_onnx

ROOT = Path(__file__).resolve().parents[1]
FEATURES = ("x1", "x2", "x3")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start(args: list[str], port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, *args, "--port", str(port)], env=env, cwd=ROOT, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{args} did not start") from None
            time.sleep(0.2)


def flood(port: int, megabytes: int) -> tuple[int, bytes]:
    """Bytes sent before the peer stopped reading, and the first bytes of its answer."""
    line = b"x-flood: " + b"a" * 1000 + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nhost: x\r\n")
        try:
            while sent < megabytes * 1024 * 1024:
                sock.sendall(line)
                sent += len(line)
        except OSError:
            pass
        try:
            answer = sock.recv(200)
        except OSError:
            answer = b""
    return sent, answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=256)
    options = parser.parse_args()
    x = pd.DataFrame(np.random.default_rng(0).normal(size=(200, 3)), columns=list(FEATURES))
    model = Ridge().fit(x, x.sum(axis=1))
    onnx_bytes = to_onnx(model, numeric_columns(FEATURES)).model.SerializeToString()
    with tempfile.TemporaryDirectory() as scratch:
        bundle = write_bundle(
            Path(scratch) / "bundle",
            onnx_bytes,
            ModelMetadata("flood", "1", FEATURES, MATRIX_INPUT, OUTPUT_NAME, hashlib.sha256(onnx_bytes).hexdigest()),
        )
        env = {**os.environ, "MLOPS_ROUTER_STATE_FILE": str(Path(scratch) / "table.json")}
        server_port, router_port = free_port(), free_port()
        server = start(["-m", "serving", str(bundle)], server_port, env)
        router_args = [
            "-m",
            "serving.router",
            "--model",
            "flood",
            "--deployment",
            f"v1=http://127.0.0.1:{server_port}@100:1",
        ]
        router = start(router_args, router_port, env)
        try:
            print(f"{options.megabytes} MiB of 1 KB header lines on one connection to each\n")
            print("| process | RSS before | accepted before closing | answer | RSS after |\n|---|---|---|---|---|")
            for name, process, port in (("server", server, server_port), ("router", router, router_port)):
                before = rss_mb(process.pid)
                sent, answer = flood(port, options.megabytes)
                time.sleep(0.5)
                status = answer.split(b"\r\n", 1)[0].decode(errors="replace") or "(closed)"
                print(f"| {name} | {before:.0f} MB | {sent / 1024:.0f} KB | {status} | {rss_mb(process.pid):.0f} MB |")
        finally:
            for process in (router, server):
                process.terminate()
                process.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
