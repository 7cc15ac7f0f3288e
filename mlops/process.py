"""Start, find, health-wait and stop long-running server processes (MLflow, Prefect).

A server is identified by its URL: if something healthy already answers there, it is
reused; if the port is taken by something else, that is a clear error, never a second
server fighting for the port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx


class ServerError(RuntimeError):
    """A managed server could not be started, reached or stopped."""


class PortInUseError(ServerError):
    """The port belongs to a process that is not the expected server."""


@dataclass(frozen=True)
class ManagedServer:
    """A server process described by how to start it and how to tell it is healthy.

    Attributes:
        name: Short name used in messages and file names.
        command: argv that runs the server in the foreground.
        host: Interface the server binds.
        port: Port the server binds.
        health_path: Path that answers 200 when the server is up.
        is_expected: Tells from the health response body that this is the right server.
        state_dir: Folder for the pid file and log.
        env: Extra environment for the process.
        cwd: Working directory of the process (default: the caller's).
    """

    name: str
    command: Sequence[str]
    host: str
    port: int
    health_path: str
    is_expected: Callable[[str], bool]
    state_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / f"{self.name}.log"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for tests and benchmarks)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def probe(server: ManagedServer) -> bool | None:
    """True: the expected server answers. False: the port is taken by something else. None: free."""
    if not _port_open(server.host, server.port):
        return None
    try:
        response = httpx.get(server.url + server.health_path, timeout=2.0)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and server.is_expected(response.text)


def reusable(server: ManagedServer) -> bool:
    """True if the expected server answers already; False if its port is free.

    Raises:
        PortInUseError: The port answers but not as the expected server.
    """
    state = probe(server)
    if state is False:
        raise PortInUseError(
            f"{server.name}: port {server.port} on {server.host} is in use by something that is not "
            f"a {server.name} server (no healthy answer at {server.url}{server.health_path}). "
            f"Stop that process or choose another port."
        )
    return state is True


def _log_tail(path: Path, lines: int = 25) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def start(server: ManagedServer, timeout: float = 90.0) -> bool:
    """Start the server unless the expected server already answers at its URL.

    Returns:
        True if a new process was started, False if a running server was reused.

    Raises:
        PortInUseError: The port answers but not as the expected server.
        ServerError: The process exited or did not become healthy in time.
    """
    if reusable(server):
        return False
    server.state_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **server.env}
    # Console scripts of this environment (uvicorn, gunicorn) must be found by the server.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    with server.log_file.open("ab") as log:
        process = subprocess.Popen(
            list(server.command),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=server.cwd,
            start_new_session=True,
        )
    server.pid_file.write_text(str(process.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            server.pid_file.unlink(missing_ok=True)
            raise ServerError(
                f"{server.name} exited with code {process.returncode} while starting; "
                f"log {server.log_file}:\n{_log_tail(server.log_file)}"
            )
        if probe(server) is True:
            return True
        time.sleep(0.25)
    stop(server)
    raise ServerError(
        f"{server.name} did not become healthy at {server.url}{server.health_path} within {timeout:.0f} s; "
        f"log {server.log_file}:\n{_log_tail(server.log_file)}"
    )


def serve_health(port: int, body: str, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Answer ``GET /health`` with ``body`` on ``host:port`` from a daemon thread, so that a long-running
    process of ours without a server of its own can be started, found and reused like the others."""
    answer = body.encode()

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/health"
            self.send_response(200 if found else 404)
            self.send_header("content-length", str(len(answer) if found else 0))
            self.end_headers()
            if found:
                self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Health)
    threading.Thread(target=server.serve_forever, name=f"health-{port}", daemon=True).start()
    return server


def _alive(pid: int) -> bool:
    """The process runs (a zombie, ended but not yet reaped by a parent that lives on, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): signal 0 is all we can tell
    return state not in ("Z", "X")


def stop(server: ManagedServer, timeout: float = 20.0) -> bool:
    """Stop the process group this module started for the server (never by name).

    Returns:
        True if a process was stopped, False if none of ours was running.
    """
    if not server.pid_file.exists():
        return False
    pid = int(server.pid_file.read_text().strip())
    server.pid_file.unlink()
    if not _alive(pid):
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                finished, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                finished = 0 if _alive(pid) else pid
            if finished == pid or not _alive(pid):
                return True
            time.sleep(0.1)
    raise ServerError(f"{server.name} (pid {pid}) did not stop")
