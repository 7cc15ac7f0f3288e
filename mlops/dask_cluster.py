"""A Dask cluster on loopback as a user starts one: ``dask scheduler`` and ``dask worker`` processes.

For tests, benchmarks and trying the Dask paths on one machine; a team points ``MLOPS_DASK_ADDRESS`` at
its own scheduler instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlops.process import free_port


@contextmanager
def dask_processes(
    workers: int, env: dict[str, str] | None = None, preload: tuple[str, ...] = (), timeout: float = 120.0
) -> Iterator[str]:
    """``dask scheduler`` and ``dask worker --nworkers <workers> --nthreads 1`` on 127.0.0.1, with ``env`` added
    to this process's environment and the ``preload`` modules imported by each worker as it starts (e.g.
    ``tasks.batch_dask``: a first task then finds Prefect, MLflow and onnxruntime imported); yields the
    scheduler's address once every worker joined, then stops them."""
    from distributed import Client

    dask = str(Path(sys.executable).with_name("dask"))
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    environment = {**os.environ, **(env or {})}

    def spawn(*args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [dask, *args, "--host", "127.0.0.1", "--no-dashboard"],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    processes = [spawn("scheduler", "--port", str(port))]
    preloads = [argument for module in preload for argument in ("--preload", module)]
    processes.append(spawn("worker", address, "--nworkers", str(workers), "--nthreads", "1", *preloads))
    try:
        with Client(address, timeout=f"{timeout:.0f}s") as client:
            client.wait_for_workers(workers, timeout=timeout)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
