"""Warm flow runs: ``python -m deployments.warm_runs run`` stands for a child forked from the warm server,
which gets the client's streams, folder, environment and signals, and whose exit code the client returns;
without a server the same command runs cold. (The whole loop runs through it in ``tests/e2e``.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployments.prefect_worker import PROJECT
from mlops.process import _alive

PROBE = """
import json, os, sys, time
print(json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(), "marker": os.environ.get("MARKER"),
                  "warm": "xml.dom.minidom" in sys.modules}), flush=True)
print("to stderr", file=sys.stderr, flush=True)
if os.environ.get("SLEEP"):
    time.sleep(float(os.environ["SLEEP"]))
raise SystemExit(int(os.environ.get("CODE", "0")))
"""


MODULES = ["--modules", "xml.dom.minidom"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("warm")
    (folder / "probe_module.py").write_text(PROBE)
    return folder


@pytest.fixture(scope="module")
def server(workdir: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """A warm server that imports one module nothing else here imports (its children find it loaded)."""
    socket_path = workdir / "warm.sock"
    process = subprocess.Popen(
        [sys.executable, "-m", "deployments.warm_runs", "serve", "--socket", str(socket_path), *MODULES],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    while "ready" not in process.stdout.readline():
        assert time.monotonic() < deadline and process.poll() is None, "the warm server did not start"
    yield process, socket_path
    process.terminate()
    process.wait(timeout=10)


def run_client(workdir: Path, socket_path: Path | None, **env: str) -> subprocess.Popen[str]:
    environment = {**os.environ, "PYTHONPATH": f"{PROJECT}{os.pathsep}{workdir}", **env}
    environment.pop("MLOPS_WARM_SOCKET", None)
    if socket_path is not None:
        environment["MLOPS_WARM_SOCKET"] = str(socket_path)
    return subprocess.Popen(
        [sys.executable, "-m", "deployments.warm_runs", "run", "-m", "probe_module"],
        cwd=workdir,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def probe_line(client: subprocess.Popen[str]) -> dict[str, object]:
    assert client.stdout is not None
    return dict(json.loads(client.stdout.readline()))


def test_a_run_is_a_fork_of_the_warm_server_with_the_clients_streams_folder_env_and_exit_code(
    server: tuple[subprocess.Popen[str], Path], workdir: Path
) -> None:
    process, socket_path = server
    client = run_client(workdir, socket_path, MARKER="run-1", CODE="3")
    out, err = client.communicate(timeout=30)
    seen = probe_line_from(out)
    assert client.returncode == 3
    assert seen["ppid"] == process.pid  # forked by the server, not started by the client
    assert seen["warm"] is True  # the server's import is there before the run imports anything
    assert seen["cwd"] == str(workdir) and seen["marker"] == "run-1"
    assert "to stderr" in err

    second = run_client(workdir, socket_path, MARKER="run-2")
    out, _ = second.communicate(timeout=30)
    assert second.returncode == 0 and probe_line_from(out)["marker"] == "run-2"


def probe_line_from(out: str) -> dict[str, object]:
    return dict(json.loads(out.splitlines()[0]))


def test_without_a_server_the_same_command_runs_cold(workdir: Path) -> None:
    for socket_path in (None, workdir / "nobody-listens.sock"):
        client = run_client(workdir, socket_path, MARKER="cold", CODE="4")
        out, err = client.communicate(timeout=60)
        seen = probe_line_from(out)
        assert client.returncode == 4 and seen["marker"] == "cold" and "to stderr" in err
        assert seen["pid"] == client.pid and seen["warm"] is False  # the client became the run (exec)


def test_a_signal_to_the_client_reaches_the_run_and_a_killed_client_takes_its_run_along(
    server: tuple[subprocess.Popen[str], Path], workdir: Path
) -> None:
    _, socket_path = server
    client = run_client(workdir, socket_path, SLEEP="60")
    child = int(str(probe_line(client)["pid"]))
    client.send_signal(signal.SIGTERM)  # how the worker stops a flow run's process
    client.communicate(timeout=30)
    assert client.returncode == -signal.SIGTERM  # the run's own ending, relayed
    assert not _alive(child)

    client = run_client(workdir, socket_path, SLEEP="60")
    child = int(str(probe_line(client)["pid"]))
    client.kill()
    client.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the run outlived its killed client"


def test_a_zombie_counts_as_stopped() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while (
        time.monotonic() < deadline and os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    ):
        time.sleep(0.05)
    assert not _alive(process.pid)  # ended, not yet reaped
    process.wait()
