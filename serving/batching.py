"""Micro-batching: small requests that arrive in the same event-loop turn share one model call.

A request queues its matrix and awaits a future; the first one of a turn schedules a flush
with ``call_soon``, which runs after every request already parsed in that turn has queued.
Nothing waits on a timer, so a lone request pays one loop turn, not a batching window; under
concurrency the per-call cost of onnxruntime (most of a one-row request) is shared.
Every model the server takes scores rows independently, so a row's prediction does not
depend on its neighbours in the batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

Pending = tuple[np.ndarray, "asyncio.Future[np.ndarray]", str]
# Told of every successful call: request ids, rows per request, the stacked inputs and the outputs.
CallListener = Callable[[list[str], list[int], np.ndarray, np.ndarray], object]


class MicroBatcher:
    """Coalesces concurrent small requests into model calls of at most ``max_rows`` rows."""

    def __init__(
        self, predict: Callable[[np.ndarray], np.ndarray], max_rows: int, on_call: CallListener | None = None
    ) -> None:
        self._predict = predict
        self.max_rows = max_rows
        self.on_call = on_call
        self.calls = 0
        self._pending: list[Pending] = []
        self._scheduled = False

    async def predict(self, matrix: np.ndarray, request_id: str = "") -> np.ndarray:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._pending.append((matrix, future, request_id))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        chunk: list[Pending] = []
        rows = 0
        for item in pending:
            if chunk and rows + len(item[0]) > self.max_rows:
                self._run(chunk)
                chunk, rows = [], 0
            chunk.append(item)
            rows += len(item[0])
        if chunk:
            self._run(chunk)

    def _run(self, chunk: list[Pending]) -> None:
        self.calls += 1
        inputs = chunk[0][0] if len(chunk) == 1 else np.concatenate([matrix for matrix, _, _ in chunk])
        try:
            outputs = self._predict(inputs)
        except Exception as error:  # every request of the call gets the model's error
            for _, future, _ in chunk:
                if not future.done():
                    future.set_exception(error)
            return
        offset = 0
        for matrix, future, _ in chunk:
            if not future.done():
                future.set_result(outputs[offset : offset + len(matrix)])
            offset += len(matrix)
        if self.on_call is not None:
            self.on_call([request_id for _, _, request_id in chunk], [len(m) for m, _, _ in chunk], inputs, outputs)
