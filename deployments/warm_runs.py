"""Warm flow runs: the process worker starts each flow run by forking an interpreter that has
already imported Prefect, MLflow, scikit-learn, pandas, ONNX, Great Expectations and Evidently.

A cold ``python -m prefect.engine`` pays 8 to 15 s of imports on these machines before a flow's first
line runs; a fork of a warm interpreter pays milliseconds. Prefect's machinery is unchanged: the
worker still submits each run, starts a process for it (this module's light ``run`` command, the
deployments' ``command`` job variable), streams its output and cancels it; the forked child runs
``prefect.engine`` for the flow run exactly as the cold command would, so states, logs, events and
the UI are the same.

    python -m deployments.warm_runs serve --socket PATH -- prefect worker start ...
        imports the heavy modules, starts the worker command (with MLOPS_WARM_SOCKET=PATH) and
        forks one child per flow run asked for on PATH; it exits when the worker does.
    python -m deployments.warm_runs run
        (the worker's command for a flow run) hands its stdin/stdout/stderr, working folder and
        environment to the server at MLOPS_WARM_SOCKET, relays SIGTERM/SIGINT to the child and
        exits with its exit code. Without a server it becomes ``python -m prefect.engine`` (cold).
    python -m deployments.warm_runs run -m MODULE ARGS...
        the same for any module (``mlops deploy`` runs ``prefect deploy`` this way).

Only the standard library is imported at module level: ``run`` must start in milliseconds.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import importlib
import json
import os
import runpy
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

SOCKET_ENV = "MLOPS_WARM_SOCKET"
ENGINE = ["-m", "prefect.engine"]
# What a flow run of this project imports, so that a forked child finds it in sys.modules.
WARM_MODULES = (
    "prefect.engine",
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.deployments",
    "prefect.cli",
    "prefect.events",
    "mlflow",
    "mlflow.sklearn",
    "mlflow.tracking",
    "sklearn.pipeline",
    "sklearn.ensemble",
    "sklearn.linear_model",
    "pandas",
    "pyarrow.parquet",
    "onnxruntime",
    "skl2onnx",
    # the boosting extra (about 1.3 + 1.7 + 0.6 s of imports a boosted training would pay; absent: skipped)
    "xgboost",
    "lightgbm",
    "catboost",
    "onnxmltools",
    "matplotlib.figure",  # the training's plots: about 1 s of imports a run would pay otherwise
    "matplotlib.backends.backend_agg",
    "great_expectations",
    "evidently",
    "evidently.presets",
    "docker",
    "flows.train",
    "flows.release",
    "flows.monitor",
    "flows.monitor_all",
    "flows.landing",
    "flows.batch_score",
    "flows.register",
)
MESSAGE_BYTES = 1 << 20


@dataclass(frozen=True)
class Job:
    """What a forked child runs: the client's standard streams, folder, environment and argv."""

    fds: list[int]
    cwd: str
    env: dict[str, str]
    argv: list[str]


def _send(conn: socket.socket, message: dict[str, object]) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def warm_up(modules: tuple[str, ...] = WARM_MODULES) -> list[str]:
    """Import ``modules``; returns the ones that could not be imported (a missing extra is no error)."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except (ImportError, OSError):  # OSError: a library's native part does not load (e.g. no libgomp)
            missing.append(name)
    gc.collect()
    gc.freeze()  # keep the warm heap out of the children's collections (fewer copied pages)
    return missing


def _accept(listener: socket.socket) -> tuple[socket.socket, Job] | None:
    conn, _ = listener.accept()
    fds: list[int] = []
    try:
        data, fds, _, _ = socket.recv_fds(conn, MESSAGE_BYTES, 3)
        request = json.loads(data)
        return conn, Job(fds=fds, cwd=request["cwd"], env=request["env"], argv=request["argv"])
    except (OSError, ValueError, KeyError) as error:
        print(f"warm-runs: dropped a malformed request: {error}", file=sys.stderr, flush=True)
        for fd in fds:
            os.close(fd)
        conn.close()
        return None


def listen(path: Path) -> socket.socket:
    """The server's socket, bound before the imports: runs asked for meanwhile wait, not start cold."""
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(64)
    return listener


def serve(listener: socket.socket, worker: subprocess.Popen[bytes] | None) -> Job:
    """Fork a child per request on ``listener`` until ``worker`` exits; returns only in a child, with its job."""
    path = Path(listener.getsockname())
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    print(f"warm-runs: ready on {path}", flush=True)
    while worker is None or worker.poll() is None:
        for key, _ in selector.select(timeout=0.2):
            if key.fileobj is listener:
                accepted = _accept(listener)
                if accepted is None:
                    continue
                conn, job = accepted
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    listener.close()
                    for other in children.values():
                        other.close()
                    conn.close()
                    return job
                for fd in job.fds:
                    os.close(fd)
                children[pid] = conn
                selector.register(conn, selectors.EVENT_READ, pid)
                _send(conn, {"pid": pid})
            else:  # the client went away (killed): so does its child
                pid = key.data
                if not key.fileobj.recv(1):  # type: ignore[union-attr]
                    selector.unregister(key.fileobj)
                    _kill(pid, signal.SIGKILL)
        _reap(children, selector)
    listener.close()
    path.unlink(missing_ok=True)
    raise SystemExit(worker.returncode if worker is not None else 0)


def _kill(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _reap(children: dict[int, socket.socket], selector: selectors.BaseSelector) -> None:
    """Tell the client of each child that ended its exit code (only our forks: the worker's own status
    stays for ``Popen.poll``)."""
    for pid in list(children):
        try:
            ended, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            ended, status = pid, 255 << 8  # reaped elsewhere: its code is lost
        if ended == 0:
            continue
        conn = children.pop(pid)
        with contextlib.suppress(OSError):  # the client may be gone
            _send(conn, {"exit": os.waitstatus_to_exitcode(status)})
        if conn in (key.fileobj for key in selector.get_map().values()):
            selector.unregister(conn)
        conn.close()


def run_job(job: Job) -> NoReturn:
    """In the forked child: become the flow-run process the client stands for, then run its argv."""
    for target, fd in enumerate(job.fds):
        os.dup2(fd, target)
        os.close(fd)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    os.chdir(job.cwd)
    os.environ.clear()
    os.environ.update(job.env)
    if "prefect.context" in sys.modules:  # read at its import: the settings of this run's environment now
        sys.modules["prefect.context"].refresh_global_settings_context()
    if job.cwd not in sys.path:
        sys.path.insert(0, job.cwd)
    if job.argv[:1] != ["-m"] or len(job.argv) < 2:
        print(f"warm-runs: only `-m MODULE ...` runs warm, not {job.argv}", file=sys.stderr)
        _exit(2)
    module = job.argv[1]
    sys.argv = [module, *job.argv[2:]]
    code: int = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    _exit(code)


def _exit(code: int) -> NoReturn:
    """Exit like an interpreter that ends (thread pools told to stop and non-daemon threads joined,
    as ``Py_Finalize`` does; atexit run; streams flushed) but without C++ static destructors: the
    native thread pools they join were never forked (they hang or abort in a child)."""
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def answers(url: str, timeout: float) -> bool:
    """Whether ``url`` answers 2xx within ``timeout`` seconds (asked every 0.2 s)."""
    from urllib.error import URLError
    from urllib.request import urlopen

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urlopen(url, timeout=2) as response:
                if 200 <= response.status < 300:
                    return True
        except (URLError, OSError, ValueError):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def _start_worker(command: list[str], path: Path, after: str | None, timeout: float) -> subprocess.Popen[bytes] | None:
    """The worker command, started once ``after`` answers (at once without it); None when it never did."""
    try:
        if after and not answers(after, timeout):
            print(f"warm-runs: {after} did not answer within {timeout:.0f} s; the worker was not started", flush=True)
            return None
        return subprocess.Popen(command, env={**os.environ, SOCKET_ENV: str(path)})
    except Exception as error:  # reported here: the main thread only learns there is no worker
        print(f"warm-runs: the worker could not be started: {error!r}", flush=True)
        return None


def _serve_main(args: argparse.Namespace) -> NoReturn:
    path = Path(args.socket).resolve()
    listener = listen(path)
    # The worker starts beside the imports, as soon as the API it asks for runs answers (the servers may still be
    # starting: `mlops demo` starts all three at once).
    starting: list[subprocess.Popen[bytes] | None] = []
    starter = threading.Thread(
        target=lambda: starting.append(_start_worker(args.worker, path, args.after, args.after_timeout)),
        name="worker-start",
        daemon=True,
    )
    if args.worker:
        starter.start()
    started = time.perf_counter()
    missing = warm_up(tuple(args.modules.split(",")) if args.modules else WARM_MODULES)
    note = f" (not installed: {', '.join(missing)})" if missing else ""
    print(f"warm-runs: imports done in {time.perf_counter() - started:.1f} s{note}", flush=True)
    worker = None
    if args.worker:
        starter.join()
        if (worker := starting[0]) is None:
            raise SystemExit(1)
    try:
        job = serve(listener, worker)
    except BaseException:
        if worker is not None and worker.poll() is None:
            worker.terminate()
        raise
    run_job(job)


def _cold(argv: list[str]) -> NoReturn:
    os.execv(sys.executable, [sys.executable, *argv])


def _run_main(argv: list[str]) -> int:
    """The flow-run process as the worker sees it: a stand-in for the forked child."""
    path = os.environ.get(SOCKET_ENV)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        if not path:
            raise FileNotFoundError("no server")
        conn.connect(path)
    except OSError:
        conn.close()
        _cold(argv)
    request = {"cwd": os.getcwd(), "env": dict(os.environ), "argv": argv}
    socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
    reader = conn.makefile("r")
    started = json.loads(reader.readline() or "{}")
    child = started.get("pid")
    if child is None:
        print("warm-runs: the server did not start the run; see the worker's log", file=sys.stderr)
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, _frame: _kill(child, signal.Signals(number)))
    line = reader.readline()  # a relayed signal interrupts it; Python retries (PEP 475)
    if not line:
        print("warm-runs: the server went away before the run ended", file=sys.stderr)
        return 1
    return _end_like(int(json.loads(line)["exit"]))


def _end_like(code: int) -> int:
    """The run's exit code; a run ended by a signal ends this process by the same signal, as the worker
    would have seen of a cold run."""
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        time.sleep(1)  # the signal arrives
    return code if code >= 0 else 128 - code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.warm_runs", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("serve", help="import the heavy modules, start the worker, fork flow runs")
    server.add_argument("--socket", required=True, help="the Unix socket to listen on")
    server.add_argument("--modules", default=None, help="comma-separated modules to import (default: the flows')")
    server.add_argument("--after", default=None, help="a URL that must answer before the worker starts (its API)")
    server.add_argument("--after-timeout", type=float, default=120.0, help="seconds to wait for --after (120)")
    server.add_argument("worker", nargs=argparse.REMAINDER, help="-- the worker command to start beside it")
    commands.add_parser("run", help="the worker's command for one flow run (or: run -m MODULE ARGS...)")
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["run"]:  # the rest is the child's: `-m MODULE ARGS...`, by default the engine
        return _run_main(arguments[1:] or ENGINE)
    args = parser.parse_args(arguments)
    if args.worker[:1] == ["--"]:  # the separator only: the worker's own arguments stay as given
        args.worker = args.worker[1:]
    return _serve_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
