"""The endpoint router: one stable URL for a model, forwarding each request to a deployment by weight.

``python -m serving.router --model diabetes --port 8000 [--deployment NAME=URL@WEIGHT[:VERSION]]...``

- **Routing**: every path but the router's own (``/admin/...``, ``/metrics``, health) is forwarded
  as is to a live deployment, drawn by weight — or by a hash of the sticky header's value, so a
  key stays on one deployment. ``/v2/models/<m>/versions/<v>/...`` goes to the deployment of
  version ``v``. Answers carry ``x-mlops-deployment`` and ``x-mlops-model-version``. If the chosen
  deployment refuses the connection, the request is retried once on another live deployment (and
  the refusal counted against the first).
- **Mirroring**: a share of requests is also sent, after the answer, to each shadow deployment;
  its answers are recorded (and compared with the answer returned), never returned.
- **Admin API** (bearer token ``MLOPS_ROUTER_ADMIN_TOKEN``; disabled without one): list, add and
  remove deployments, set weights and the mirror share atomically, read per-deployment windows
  (``/admin/stats?since=<epoch>``) or cumulative counters (``?window=0``, cheap to poll).
  A removed deployment takes no new request; the call returns once its in-flight ones finished.
- The table is saved to ``MLOPS_ROUTER_STATE_FILE`` on every change and read back at start, so a
  restarted router routes as before.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs

import numpy as np
import orjson
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from serving.asgi import Receive, Reply, Request, RequestError, Scope, Send, authorize, bearer, dumps, send_reply
from serving.binary import HEADER
from serving.config import ConfigError, EnvConfig
from serving.endpoint import (
    Deployment,
    DeploymentStats,
    EndpointError,
    EndpointMetrics,
    InvalidField,
    Prediction,
    RoutingTable,
)
from serving.http_limits import BoundedHttpProtocol
from serving.upstream import Response, Upstream, UpstreamError

logger = logging.getLogger("serving.router")
FORWARDED = (b"content-type", b"authorization", b"x-request-id", b"accept", HEADER)
READY_PROBE_SECONDS = 1.0  # readiness answers are reused this long
READY_PROBE_TIMEOUT = 2.0  # a deployment that has not answered ready by then is not counted
EJECT_AFTER = 3  # consecutive connection failures that take a deployment out of rotation
HEALTH_PROBE_SECONDS = 1.0  # how often a deployment out of rotation is asked whether it is ready again
LOG_EVERY_SECONDS = 10.0  # at most one connection-failure warning per deployment this often
OWN_PATHS = frozenset({"/metrics", "/v2/health/live", "/v2/health/ready", "/livez", "/readyz"})


@dataclass(frozen=True)
class RouterConfig(EnvConfig):
    """How the router listens and forwards.

    Attributes:
        model: Registered model name this endpoint serves.
        host: Interface to bind (loopback by default).
        port: Port to bind.
        admin_token: Bearer token of the admin API; unset disables it.
        state_file: Where the routing table is saved on every change and read at start.
        sticky_header: Requests with this header keep to one deployment per value.
        timeout: Seconds a deployment has to answer (504 beyond).
        max_body_bytes: Largest request body forwarded (413 beyond).
        drain_timeout: Seconds a removed deployment's in-flight requests get to finish.
        log_level: uvicorn log level.
    """

    ENV_PREFIX: ClassVar[str] = "MLOPS_ROUTER_"

    model: str = "model"
    host: str = "127.0.0.1"
    port: int = 8000
    admin_token: str | None = None
    state_file: Path | None = None
    sticky_header: str = "x-mlops-sticky"
    timeout: float = 10.0
    max_body_bytes: int = 4 * 1024 * 1024
    drain_timeout: float = 30.0
    log_level: str = "info"

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.max_body_bytes <= 0 or self.drain_timeout < 0:
            raise ConfigError("timeout and max_body_bytes must be > 0, drain_timeout >= 0")


def predictions_of(body: bytes, header_length: bytes | None = None) -> tuple[Prediction, ...]:
    """The predictions in a model server's answer (MLflow or v2 style, v2 outputs as JSON or as binary tensor
    data after a JSON part of ``header_length`` bytes): numbers, or a classifier's labels; () if there are none."""
    text = body if header_length is None else body[: int(header_length)] if header_length.isdigit() else b""
    try:
        content = orjson.loads(text)
    except orjson.JSONDecodeError:
        return ()
    if not isinstance(content, dict):
        return ()
    values = content.get("predictions")
    if values is None:
        outputs = content.get("outputs")
        first = outputs[0] if isinstance(outputs, list) and outputs and isinstance(outputs[0], dict) else {}
        values = first.get("data")
        size = (first.get("parameters") or {}).get("binary_data_size") if isinstance(first, dict) else None
        if values is None and header_length is not None and first.get("datatype") == "FP64" and type(size) is int:
            start = len(text)
            return tuple(np.frombuffer(body[start : start + size], dtype="<f8").tolist()) if size % 8 == 0 else ()
    if not isinstance(values, list):
        return ()
    flat = [v[0] if isinstance(v, list) and v else v for v in values]
    return tuple(
        v if isinstance(v, str) else float(v)
        for v in flat
        if isinstance(v, int | float | str) and not isinstance(v, bool)
    )


class Router:
    """ASGI app of one endpoint."""

    def __init__(self, config: RouterConfig, table: RoutingTable | None = None) -> None:
        self.config = config
        self.table = table or RoutingTable()
        self.upstreams: dict[str, Upstream] = {}
        self.stats: dict[str, DeploymentStats] = {}
        for deployment in self.table.deployments:
            self._attach(deployment)
        self._admin = bearer(config.admin_token)
        self._sticky = config.sticky_header.lower().encode()
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._readiness: tuple[RoutingTable, float, int] | None = None
        self._failures: dict[str, int] = {}  # consecutive connection failures per deployment
        self._ejected: set[str] = set()  # out of rotation until they answer ready again
        self._prober: asyncio.Task[None] | None = None
        self._warned: dict[str, tuple[float, int]] = {}  # last warning time, failures not logged since
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(EndpointMetrics(config.model, lambda: self.table, self.stats))

    # --- state ------------------------------------------------------------------------------

    def _attach(self, deployment: Deployment) -> None:
        host, port = deployment.address
        self.upstreams[deployment.name] = Upstream(host, port)
        self.stats[deployment.name] = DeploymentStats()

    def _install(self, table: RoutingTable) -> None:
        """Swap the table (one assignment: requests see the old one or the new one) and save it."""
        self.table = table
        if self.config.state_file is not None:
            path = self.config.state_file
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps({"model": self.config.model, **table.to_dict()}, indent=2))
            os.replace(temporary, path)

    # --- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    gc.collect()
                    gc.freeze()  # what is loaded now lives as long as the process: keep it out of full GC passes
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    for upstream in self.upstreams.values():
                        upstream.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        request = Request(scope, receive, {}, "", self.config.max_body_bytes)
        try:
            if path.startswith("/admin/"):
                if self._admin is None:
                    raise RequestError(
                        403, "the admin API is disabled: start the router with MLOPS_ROUTER_ADMIN_TOKEN set"
                    )
                authorize(scope, self._admin)
                reply = await self._admin_call(request, scope["method"], path)
            elif path in OWN_PATHS:
                reply = await self._own(path)
            else:
                await self._forward(request, scope, send)
                return
        except RequestError as error:
            reply = Reply(error.status, dumps({"error": error.message}))
        except InvalidField as error:
            reply = Reply(400, dumps({"error": str(error)}))
        except EndpointError as error:
            reply = Reply(409, dumps({"error": str(error)}))
        except Exception:  # never uvicorn's plain-text 500
            logger.exception("%s %s failed", scope["method"], path)
            reply = Reply(500, dumps({"error": f"internal error on {scope['method']} {path}; see the router log"}))
        await send_reply(send, reply)

    async def _own(self, path: str) -> Reply:
        if path == "/metrics":
            return Reply(200, generate_latest(self.registry), CONTENT_TYPE_LATEST.encode())
        if path in ("/v2/health/live", "/livez"):
            return Reply(200, b'{"live":true}')
        reachable = await self._reachable()
        ready = reachable > 0
        return Reply(
            200 if ready else 503, dumps({"ready": ready, "deployments": len(self.table.live), "reachable": reachable})
        )

    async def _reachable(self) -> int:
        """How many deployments taking traffic answer ready themselves (probed at most once per
        ``READY_PROBE_SECONDS``, so a flood of readiness checks is not passed on to them)."""
        now = time.monotonic()
        table = self.table
        cached = self._readiness
        if cached is not None and cached[0] is table and now - cached[1] < READY_PROBE_SECONDS:
            return cached[2]

        in_rotation = [d for d in table.live if d.name not in self._ejected]
        reachable = sum(await asyncio.gather(*(self._answers_ready(d.name) for d in in_rotation)))
        self._readiness = (table, now, reachable)
        return reachable

    # --- forwarding -------------------------------------------------------------------------

    def _pick(self, scope: Scope) -> Deployment:
        table = self.table
        path: str = scope["path"]
        if "/versions/" in path:
            parts = path.split("/")
            if len(parts) > 5 and parts[1:3] == ["v2", "models"] and parts[4] == "versions":
                pinned = table.serving_version(parts[5])
                if pinned is None:
                    raise RequestError(404, f"no live deployment serves version {parts[5]!r} of {self.config.model}")
                return pinned
        sticky = next((value for key, value in scope["headers"] if key == self._sticky), None)
        draw = random.random()
        chosen = table.choose(sticky, draw)
        if chosen is None:
            raise RequestError(503, f"endpoint {self.config.model} has no deployment taking traffic")
        if chosen.name in self._ejected:
            chosen = table.choose_other(frozenset(self._ejected), draw, sticky)
            if chosen is None:
                raise RequestError(
                    503,
                    f"no deployment of {self.config.model} is answering (all out of rotation after connection "
                    "failures; they return when they answer ready): retry shortly",
                )
        return chosen

    async def _forward(self, request: Request, scope: Scope, send: Send) -> None:
        body = await request.body()
        # Chosen only once the body is in, and counted in flight from that moment on (no await until the upstream
        # counts it): a deployment removed while a body uploads is never picked, nor drained with the request open.
        deployment = self._pick(scope)
        headers = b"".join(key + b": " + value + b"\r\n" for key, value in scope["headers"] if key in FORWARDED)
        target = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b"")
        # HEAD goes upstream as GET (a response to HEAD has no body to wait for); uvicorn sends the client the
        # headers only
        method = b"GET" if scope["method"] == "HEAD" else scope["method"].encode()
        sent = await self._send(deployment, method, target, headers, body)
        if sent is None:  # refused: once more on another live deployment in rotation, if there is one
            fallback = self.table.choose_other(frozenset({deployment.name, *self._ejected}), random.random())
            if fallback is not None:
                deployment = fallback
                sent = await self._send(deployment, method, target, headers, body)
        if sent is None:
            sent = Response(502, [], dumps({"error": f"deployment {deployment.name} is unreachable"})), ()
        response, answered = sent
        extra = [
            (b"x-mlops-deployment", deployment.name.encode()),
            (b"x-mlops-model-version", deployment.version.encode()),
        ]
        content_type = response.header(b"content-type") or b"application/json"
        for name in (b"x-request-id", HEADER):
            value = response.header(name)
            if value is not None:
                extra.append((name, value))
        await send_reply(send, Reply(response.status, response.body, content_type), extra)
        shadows = self.table.shadows
        if shadows and random.random() < self.table.mirror:
            for shadow in shadows:
                task = asyncio.create_task(self._mirror(shadow, method, target, headers, body, answered))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _send(
        self, deployment: Deployment, method: bytes, target: bytes, headers: bytes, body: bytes
    ) -> tuple[Response, tuple[Prediction, ...]] | None:
        """Forward and record; the answer and the predictions read from it (once, for the stats, the mirror's
        comparison and the client's answer alike), or None if the deployment could not be reached at all."""
        upstream, stats = self.upstreams[deployment.name], self.stats[deployment.name]
        start = time.perf_counter()
        try:
            response = await upstream.request(method, target, headers, body, self.config.timeout)
        except TimeoutError:
            response = Response(504, [], dumps({"error": f"deployment {deployment.name} did not answer in time"}))
        except UpstreamError as error:
            stats.observe(502, time.perf_counter() - start, ())
            self._connection_failed(deployment, error)
            return None
        self._failures[deployment.name] = 0
        predictions = predictions_of(response.body, response.header(HEADER)) if response.status == 200 else ()
        stats.observe(response.status, time.perf_counter() - start, predictions)
        return response, predictions

    # --- passive health ------------------------------------------------------------------------

    def _connection_failed(self, deployment: Deployment, error: UpstreamError) -> None:
        """Count a connection failure; the ``EJECT_AFTER``-th in a row takes a live deployment out of rotation
        until the prober sees it ready again. Warnings are rate-limited per deployment."""
        name = deployment.name
        failures = self._failures[name] = self._failures.get(name, 0) + 1
        now = time.monotonic()
        last, unlogged = self._warned.get(name, (-LOG_EVERY_SECONDS, 0))
        if now - last >= LOG_EVERY_SECONDS:
            more = f" ({unlogged} more since the last warning)" if unlogged else ""
            logger.warning("deployment %s: %s%s", name, error, more)
            self._warned[name] = (now, 0)
        else:
            self._warned[name] = (last, unlogged + 1)
        if failures >= EJECT_AFTER and name not in self._ejected and deployment.weight > 0:
            self._ejected.add(name)
            self._readiness = None
            stats = self.stats.get(name)
            if stats is not None:
                stats.ejected, stats.ejections = True, stats.ejections + 1
            logger.warning("deployment %s out of rotation after %d connection failures in a row", name, failures)
            if self._prober is None or self._prober.done():
                self._prober = asyncio.create_task(self._probe_ejected())

    async def _probe_ejected(self) -> None:
        """Ask every deployment out of rotation whether it is ready, each ``HEALTH_PROBE_SECONDS``; put back those
        that are (and forget those no longer in the table)."""
        while self._ejected:
            await asyncio.sleep(HEALTH_PROBE_SECONDS)
            for name in list(self._ejected):
                if name not in self.upstreams or self.table.get(name) is None:
                    self._ejected.discard(name)
                elif await self._answers_ready(name):
                    self._back_in_rotation(name)
                    logger.info("deployment %s answers ready again: back in rotation", name)

    async def _answers_ready(self, name: str) -> bool:
        """Whether deployment ``name`` answers its readiness check within ``READY_PROBE_TIMEOUT``."""
        upstream = self.upstreams.get(name)
        if upstream is None:
            return False
        try:
            response = await upstream.request(b"GET", b"/v2/health/ready", b"", b"", READY_PROBE_TIMEOUT)
        except (UpstreamError, TimeoutError):
            return False
        return response.status == 200

    def _back_in_rotation(self, name: str) -> None:
        self._ejected.discard(name)
        self._failures[name] = 0
        self._readiness = None
        if name in self.stats:
            self.stats[name].ejected = False

    async def _mirror(
        self,
        shadow: Deployment,
        method: bytes,
        target: bytes,
        headers: bytes,
        body: bytes,
        answered: tuple[Prediction, ...] = (),
    ) -> None:
        upstream = self.upstreams.get(shadow.name)
        if upstream is None:
            return
        stats = self.stats[shadow.name]
        stats.mirrored += 1
        with contextlib.suppress(Exception):  # a shadow's failure is recorded in its stats, never raised
            sent = await self._send(shadow, method, target, headers, body)
            if sent is not None and sent[0].status == 200 and answered:
                stats.observe_agreement(sent[1], answered)

    # --- admin ------------------------------------------------------------------------------

    async def _admin_call(self, request: Request, method: str, path: str) -> Reply:
        parts = path.strip("/").split("/")
        if parts == ["admin", "deployments"] and method == "GET":
            return Reply(200, dumps({"model": self.config.model, **self.table.to_dict()}))
        if parts == ["admin", "deployments"] and method == "POST":
            return await self._add(await self._json(request))
        if len(parts) == 3 and parts[:2] == ["admin", "deployments"] and method == "DELETE":
            return await self._remove(parts[2])
        if len(parts) == 3 and parts[:2] == ["admin", "deployments"] and method == "PUT":
            url = (await self._json(request)).get("url")
            if not isinstance(url, str):
                raise RequestError(400, "body must name the deployment's new 'url'")
            return await self._move(parts[2], url)
        if parts == ["admin", "weights"] and method == "PUT":
            content = await self._json(request)
            weights = content.get("weights", {})
            if not isinstance(weights, dict):
                raise RequestError(400, "weights must be an object of deployment name -> integer")
            unknown = sorted(set(content) - {"weights", "mirror"})
            if unknown:
                raise RequestError(400, f"unknown field(s) {', '.join(unknown)}: send weights and/or mirror")
            async with self._lock:
                self._install(self.table.with_weights(weights, content.get("mirror")))
            return Reply(200, dumps(self.table.to_dict()))
        if parts == ["admin", "stats"] and method == "GET":
            query = parse_qs(request.scope["query_string"].decode())
            try:
                since = float(query.get("since", ["0"])[0])
            except ValueError as error:
                raise RequestError(400, f"since must be epoch seconds: {error}") from error
            if query.get("window") == ["0"]:  # counters only: cheap enough to poll
                totals = {d.name: self.stats[d.name].totals() for d in self.table.deployments}
                return Reply(200, dumps({"now": time.time(), "deployments": totals}))
            window = {d.name: self.stats[d.name].since(since) for d in self.table.deployments}
            return Reply(200, dumps({"since": since, "now": time.time(), "deployments": window}))
        raise RequestError(404, f"no admin endpoint {method} {path}")

    @staticmethod
    async def _json(request: Request) -> dict[str, Any]:
        try:
            content = orjson.loads(await request.body())
        except orjson.JSONDecodeError as error:
            raise RequestError(400, f"body is not valid JSON: {error}") from error
        if not isinstance(content, dict):
            raise RequestError(400, "body must be a JSON object")
        return content

    @staticmethod
    async def _probe(deployment: Deployment) -> None:
        probe = Upstream(*deployment.address)
        try:
            ready = await probe.request(b"GET", b"/v2/health/ready", b"", b"", timeout=5)
        except (UpstreamError, TimeoutError) as error:
            raise RequestError(400, f"deployment {deployment.name} at {deployment.url} unreachable: {error}") from error
        finally:
            probe.close()
        if ready.status != 200:
            raise RequestError(400, f"deployment {deployment.name} at {deployment.url} is not ready ({ready.status})")

    async def _move(self, name: str, url: str) -> Reply:
        """Point deployment ``name`` at ``url`` (its server restarted elsewhere) once that answers ready; weight,
        version and stats kept, the old connections closed."""
        table = self.table.moved(name, url)
        moved = table.get(name)
        assert moved is not None
        await self._probe(moved)
        async with self._lock:
            table = self.table.moved(name, url)
            old = self.upstreams[name]
            self.upstreams[name] = Upstream(*moved.address)
            self._install(table)
            self._back_in_rotation(name)
        old.close()
        logger.info("moved deployment %s to %s", name, url)
        return Reply(200, dumps(self.table.to_dict()))

    async def _add(self, content: dict[str, Any]) -> Reply:
        deployment = Deployment.from_dict(content)
        await self._probe(deployment)
        async with self._lock:
            table = self.table.with_deployment(deployment)
            self._attach(deployment)
            self._install(table)
        logger.info(
            "added deployment %s (%s, version %s, weight %d)",
            deployment.name,
            deployment.url,
            deployment.version,
            deployment.weight,
        )
        return Reply(201, dumps(self.table.to_dict()))

    async def _remove(self, name: str) -> Reply:
        async with self._lock:
            self._install(self.table.without(name))
        upstream = self.upstreams[name]
        deadline = time.monotonic() + self.config.drain_timeout
        while upstream.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        drained = upstream.in_flight == 0
        upstream.close()
        del self.upstreams[name]
        self._back_in_rotation(name)  # forgotten: a deployment added again under this name starts in rotation
        logger.info("removed deployment %s (%s)", name, "drained" if drained else "drain timed out")
        return Reply(200, dumps({"removed": name, "drained": drained, **self.table.to_dict()}))


def load_table(config: RouterConfig, deployments: list[str]) -> RoutingTable:
    """The saved table if the state file exists, else the ``NAME=URL@WEIGHT[:VERSION]`` flags."""
    if config.state_file is not None and config.state_file.exists():
        return RoutingTable.from_dict(json.loads(config.state_file.read_text()))
    parsed = []
    for spec in deployments:
        name, _, rest = spec.partition("=")
        url, _, tail = rest.partition("@")
        weight, _, version = tail.partition(":")
        try:
            parsed.append(Deployment(name, url, version, int(weight or 0)))
        except ValueError as error:
            raise ConfigError(f"--deployment {spec!r}: expected NAME=URL@WEIGHT[:VERSION] ({error})") from error
    return RoutingTable(tuple(parsed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.router", description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--state-file", type=Path, default=None)
    parser.add_argument("--deployment", action="append", default=[], help="NAME=URL@WEIGHT[:VERSION], repeatable")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = RouterConfig.from_env(model=args.model, host=args.host, port=args.port, state_file=args.state_file)
        table = load_table(config, args.deployment)
    except (ConfigError, EndpointError, ValueError) as error:
        print(f"router: {error}", file=sys.stderr)
        return 2
    router = Router(config, table)
    uvicorn.run(
        router,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(config.drain_timeout),
        http=BoundedHttpProtocol,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
