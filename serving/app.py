"""The ASGI app: Open Inference Protocol v2 and MLflow's ``/invocations`` over one ONNX model.

A plain ASGI callable with a small router (see ``serving.asgi``). Small requests are scored on
the event loop (faster than a thread hop), those arriving together in one model call
(``serving.batching``); large ones in a worker thread (onnxruntime releases the GIL), so health
checks stay answered meanwhile.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.asgi import (
    Endpoint,
    Receive,
    Reply,
    Request,
    RequestError,
    Scope,
    Send,
    authorize,
    bearer,
    dumps,
    error_reply,
    send_reply,
)
from serving.batching import MicroBatcher, feed_rows, slice_outputs, stack_feeds
from serving.binary import EXTENSION, HEADER
from serving.collector import CollectorConfig, RequestCollector
from serving.config import ServerConfig
from serving.metrics import ServerMetrics
from serving.model import OnnxModel, is_matrix_regression
from serving.protocols import ExtraColumns, Ids, first_not_finite, mlflow_matrix, not_finite_answer, too_deep
from serving.typed import TypedSchema, mlflow_columns
from serving.v2 import infer_reply, model_metadata, parse_infer, parse_typed_infer

Outputs = dict[str, np.ndarray]

SERVER_NAME = "mlops-onnx-server"
SERVER_VERSION = "1"
logger = logging.getLogger("serving")


class ServingApp:
    """ASGI app serving one loaded model. ``collector`` defaults to one in ``config.collect_dir`` (if set)."""

    def __init__(self, model: OnnxModel, config: ServerConfig, collector: RequestCollector | None = None) -> None:
        self.model, self.config = model, config
        self.meta = model.metadata
        # A regression on one float64 matrix takes the fast path (micro-batched); everything else is typed.
        self.fast = is_matrix_regression(self.meta)
        self.schema = None if self.fast else TypedSchema(self.meta)
        self.features = list(self.meta.features) if self.schema is None else self.schema.names
        # Row ids and ignored columns a request may carry beside the features (the spec's ids and ignore).
        self.extra = ExtraColumns(self.meta.ids, self.meta.ignore)
        self.classifier = self.meta.task != "regression"
        self.metrics = ServerMetrics(
            self.meta.name, self.meta.version, self.meta.sha256, lambda: model.ready, config.metrics_dir
        )
        if collector is None and config.collect_dir is not None:
            collector = RequestCollector(
                CollectorConfig(
                    config.collect_dir,
                    queue_size=config.collect_queue,
                    file_rows=config.collect_file_rows,
                    file_seconds=config.collect_file_seconds,
                ),
                self.meta.name,
                self.meta.version,
                self.features,
                self.meta.classes,
                self.meta.ids,
            )
        self.collector = collector
        if collector is not None:
            self.metrics.watch(collector)
        self._outputs = (self.meta.output_name,) if self.fast else tuple(self.meta.outputs)
        self._output_parameters = {"probabilities": {"classes": list(self.meta.classes)}} if self.classifier else {}
        classes = {name: {"classes": list(self.meta.classes)} for name in ("label", "probabilities")}
        self._metadata_reply = dumps(
            model_metadata(self.meta, self.schema, model.warm_outputs, classes if self.classifier else {})
        )
        self._typed_calls = 0
        self._auth = bearer(config.token)
        self._faulty = bool(config.fault_error_share or config.fault_delay_ms)
        self._fault_count = 0
        self._executor: ThreadPoolExecutor | None = None
        # Collection is told once per model call, not per request: one queue item per batch.
        self.batcher = MicroBatcher(
            model.predict, max_rows=max(config.inline_rows, 1), on_call=self._collect_matrix if collector else None
        )
        self.typed_batcher: MicroBatcher[Outputs, Outputs] = MicroBatcher(
            model.run,
            max_rows=max(config.inline_rows, 1),
            on_call=self._collect_typed,
            stack=stack_feeds,
            rows=feed_rows,
            take=slice_outputs,
        )
        self.metrics.model_calls = lambda: self.batcher.calls + self.typed_batcher.calls + self._typed_calls
        if self.schema is not None:
            self.metrics.unknown_categories = self.schema.unknown_categories
        live = Endpoint("live", "GET", self.live, protected=False)
        ready = Endpoint("ready", "GET", self.ready, protected=False)
        self._static = {
            "/v2/health/live": live,
            "/livez": live,
            "/v2/health/ready": ready,
            "/readyz": ready,
            "/ping": ready,
            "/health": ready,
            "/v2": Endpoint("server_metadata", "GET", self.server_metadata),
            "/invocations": Endpoint("invocations", "POST", self.invocations, style="mlflow"),
            "/metrics": Endpoint("metrics", "GET", self.prometheus),
        }
        self._model_routes = {
            (): Endpoint("model_metadata", "GET", self.model_metadata),
            ("ready",): Endpoint("ready", "GET", self.ready, protected=False),
            ("infer",): Endpoint("v2_infer", "POST", self.v2_infer),
        }

    # --- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        request_id = ""
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                request_id = value.decode("latin-1")
        request_id = request_id or os.urandom(16).hex()
        endpoint, params = self._route(scope["path"])
        name, style = (endpoint.name, endpoint.style) if endpoint else ("not_found", "v2")
        try:
            if endpoint is None:
                raise RequestError(404, f"no endpoint at {scope['path']}")
            if scope["method"] != endpoint.method:
                raise RequestError(405, f"{scope['method']} is not allowed on {scope['path']}; use {endpoint.method}")
            if endpoint.protected:
                authorize(scope, self._auth)
            reply = await endpoint.handler(Request(scope, receive, params, request_id, self.config.max_body_bytes))
        except RequestError as error:
            reply = error_reply(style, error.status, error.message)
        except RecursionError:  # a structure deeper than the parsers' bounds caught: the client's, not ours
            reply = error_reply(style, 400, too_deep().message)
        except Exception:
            logger.exception("request %s to %s failed", request_id, scope["path"])
            reply = error_reply(style, 500, f"internal error on request {request_id}; see the server log")
        await send_reply(send, reply, [(b"x-request-id", request_id.encode("latin-1"))])
        self.metrics.observe(name, reply.status, time.perf_counter() - start)

    def _route(self, path: str) -> tuple[Endpoint | None, dict[str, str]]:
        endpoint = self._static.get(path)
        if endpoint is not None:
            return endpoint, {}
        parts = path.strip("/").split("/")
        if len(parts) < 3 or parts[:2] != ["v2", "models"]:
            return None, {}
        params = {"name": parts[2]}
        rest = parts[3:]
        if rest[:1] == ["versions"] and len(rest) >= 2:
            params["version"] = rest[1]
            rest = rest[2:]
        return self._model_routes.get(tuple(rest)), params

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def startup(self) -> None:
        # Everything loaded so far (modules, the session, metadata) lives as long as the process: keep it
        # out of the garbage collector's full passes, whose pauses otherwise show up in the tail latency.
        gc.collect()
        gc.freeze()
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="score")
        if self.collector is not None:
            self.collector.start()
        self.metrics.start_publishing()
        logger.info("serving %s version %s (sha256 %s)", self.meta.name, self.meta.version, self.meta.sha256[:12])

    def shutdown(self) -> None:
        """Runs after uvicorn has let in-flight requests finish: flush collection, stop threads."""
        self.model.ready = False
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self.collector is not None:
            self.collector.close()
            collector = self.collector
            logger.info(
                "collection closed: %d rows written, %d dropped, %d write errors%s",
                collector.written_rows,
                collector.dropped_rows,
                collector.write_errors,
                f" (last: {collector.last_error})" if collector.last_error else "",
            )
        self.metrics.stop_publishing()

    # --- scoring ----------------------------------------------------------------------------

    async def score(self, matrix: np.ndarray, request_id: str, ids: Ids | None = None) -> np.ndarray:
        if len(matrix) > self.config.inline_rows:
            loop = asyncio.get_running_loop()
            predictions = await loop.run_in_executor(self._executor, self.model.predict, matrix)
            if (row := first_not_finite(predictions)) is not None:
                raise not_finite_answer(row)
            if self.collector is not None:
                self.collector.submit(request_id, matrix, predictions, ids)
        else:
            predictions = await self.batcher.predict(matrix, request_id, ids)
        self.metrics.rows += len(predictions)
        return predictions

    async def score_typed(self, feeds: Outputs, request_id: str, ids: Ids | None = None) -> Outputs:
        """Score typed feeds: small requests arriving together share a call, large ones go to a worker thread."""
        rows = feed_rows(feeds)
        if rows > self.config.inline_rows:
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self.model.run, feeds)
            self._typed_calls += 1
            if (row := first_not_finite(outputs)) is not None:
                raise not_finite_answer(row)
            self._collect_typed([request_id], [rows], feeds, outputs, [ids] if ids else None)
        else:
            outputs = await self.typed_batcher.predict(feeds, request_id, ids)
        self.metrics.rows += rows
        return outputs

    def _collect_matrix(
        self,
        request_ids: list[str],
        rows: list[int],
        matrix: np.ndarray,
        predictions: np.ndarray,
        ids: list[Any] | None,
    ) -> None:
        """A numeric model call's rows and predictions (and the requests' row ids, if any carried them)."""
        if self.collector is not None:
            self.collector.submit_call(request_ids, rows, matrix, predictions, row_ids=ids)

    def _collect_typed(
        self, request_ids: list[str], rows: list[int], feeds: Outputs, outputs: Outputs, ids: list[Any] | None
    ) -> None:
        """Typed rows, each column's type kept (NaN as null), with the label and probabilities (or the value), and
        the requests' row ids."""
        if self.collector is None or self.schema is None:
            return
        if self.classifier:
            answer, extra = outputs["label"].tolist(), {"probabilities": outputs["probabilities"].tolist()}
        else:
            answer, extra = outputs[self.meta.output_name].reshape(-1).tolist(), None
        self.collector.submit_call(request_ids, rows, self.schema.rows_of(feeds), answer, extra, ids)

    def check_model(self, params: dict[str, str], reveal: bool = True) -> None:
        """404 unless the path names this server's model (and version); ``reveal``: the answer names what is
        served (never to an unauthenticated caller of an open endpoint when a token is set)."""
        if not reveal and (
            params["name"] != self.meta.name or params.get("version", self.meta.version) != self.meta.version
        ):
            raise RequestError(404, f"no model {params['name']!r} (version {params.get('version', 'any')}) here")
        if params["name"] != self.meta.name:
            raise RequestError(404, f"unknown model {params['name']!r}; this server serves {self.meta.name!r}")
        version = params.get("version")
        if version is not None and version != self.meta.version:
            raise RequestError(
                404, f"{self.meta.name} has no version {version!r} here; this server serves {self.meta.version}"
            )

    # --- handlers ---------------------------------------------------------------------------

    async def live(self, request: Request) -> Reply:
        return Reply(200, b'{"live":true}')

    async def ready(self, request: Request) -> Reply:
        if "name" in request.params:
            self.check_model(request.params, reveal=self._auth is None)
        ready = self.model.ready
        return Reply(200 if ready else 503, dumps({"ready": ready}))

    async def server_metadata(self, request: Request) -> Reply:
        return Reply(200, dumps({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": [EXTENSION]}))

    async def model_metadata(self, request: Request) -> Reply:
        """What ``infer`` takes and answers (:func:`serving.v2.model_metadata`), made once at start."""
        self.check_model(request.params)
        return Reply(200, self._metadata_reply)

    async def inject_faults(self) -> None:
        """Chaos testing (``MLOPS_SERVING_FAULT_*``): a deliberate delay and share of 500s; off by default.

        The failures are evenly spread and deterministic: request n fails when ``floor(n x share)``
        steps up (share 0.3: the 4th, 7th, 10th, ...), so a test knows what it will get.
        """
        if self.config.fault_delay_ms:
            await asyncio.sleep(self.config.fault_delay_ms / 1000)
        share = self.config.fault_error_share
        if share:
            self._fault_count += 1
            if int(self._fault_count * share) > int((self._fault_count - 1) * share):
                raise RequestError(500, "injected fault (MLOPS_SERVING_FAULT_ERROR_SHARE)")

    async def v2_infer(self, request: Request) -> Reply:
        self.check_model(request.params)
        if self._faulty:
            await self.inject_faults()
        body = await request.body()
        meta, header = self.meta, request.header(HEADER)
        if self.schema is None:
            parsed = parse_infer(body, header, self.features, self._outputs, self.config.max_rows, self.extra)
            assert parsed.matrix is not None
            predictions = await self.score(parsed.matrix, request.request_id, parsed.id_values())
            return infer_reply(parsed, meta.name, meta.version, request.request_id, {meta.output_name: predictions})
        parsed = parse_typed_infer(body, header, self.features, self._outputs, self.config.max_rows, self.extra)
        assert parsed.columns is not None
        feeds = self.schema.feeds(parsed.columns, "inputs")
        outputs = await self.score_typed(feeds, request.request_id, parsed.id_values())
        return infer_reply(parsed, meta.name, meta.version, request.request_id, outputs, self._output_parameters)

    async def invocations(self, request: Request) -> Reply:
        if self._faulty:
            await self.inject_faults()
        body = await request.body()
        content_type = (request.header(b"content-type") or "application/json").lower()
        if self.schema is None:
            matrix, ids = mlflow_matrix(body, content_type, self.features, self.config.max_rows, self.extra)
            predictions = await self.score(matrix, request.request_id, ids)
            return Reply(
                200, dumps({"predictions": predictions} if ids is None else {"predictions": predictions, "ids": ids})
            )
        columns, params, text, ids = mlflow_columns(body, content_type, self.features, self.config.max_rows, self.extra)
        method = params.get("predict_method", "predict")
        if method not in ("predict", "predict_proba") or (method == "predict_proba" and not self.classifier):
            allowed = "predict or predict_proba" if self.classifier else "predict (a regression has no probabilities)"
            raise RequestError(400, f"params.predict_method {method!r} is not supported; use {allowed}")
        feeds = self.schema.feeds(columns, "CSV" if text else "request", text)
        outputs = await self.score_typed(feeds, request.request_id, ids)
        if not self.classifier:
            answer: Any = outputs[self.meta.output_name].reshape(-1)
        elif method == "predict_proba":
            answer = outputs["probabilities"]
        else:
            answer = outputs["label"].tolist()
        return Reply(200, dumps({"predictions": answer} if ids is None else {"predictions": answer, "ids": ids}))

    async def prometheus(self, request: Request) -> Reply:
        return Reply(200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST.encode())


def create_app(model: OnnxModel, config: ServerConfig, collector: RequestCollector | None = None) -> ServingApp:
    """The ASGI app for a loaded model."""
    return ServingApp(model, config, collector)
