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
from typing import Any, Generic, TypeVar

import numpy as np

from serving.protocols import first_not_finite, not_finite_answer

Inputs = TypeVar("Inputs")
Outputs = TypeVar("Outputs")
Feeds = dict[str, np.ndarray]
# A queued request: its inputs, the future of its outputs, its request id, what it carries beside (row ids).
Pending = tuple[Inputs, asyncio.Future[Outputs], str, Any]


def _stack(items: list[Any]) -> Any:
    return np.concatenate(items)


def _rows(inputs: Any) -> int:
    return len(inputs)


def _slice(outputs: Any, start: int, stop: int) -> Any:
    return outputs[start:stop]


def stack_feeds(items: list[Feeds]) -> Feeds:
    """Typed feeds (input name → ``[rows, ...]`` array) of several requests as one call's."""
    return {name: np.concatenate([feeds[name] for feeds in items]) for name in items[0]}


def feed_rows(feeds: Feeds) -> int:
    return len(next(iter(feeds.values())))


def slice_outputs(outputs: Feeds, start: int, stop: int) -> Feeds:
    return {name: values[start:stop] for name, values in outputs.items()}


class MicroBatcher(Generic[Inputs, Outputs]):
    """Coalesces concurrent small requests into model calls of at most ``max_rows`` rows.

    Inputs are a float64 matrix by default; ``stack``/``rows``/``take`` say how to join several
    requests' inputs, count their rows and cut a call's outputs back into answers (for typed feeds:
    :func:`stack_feeds`, :func:`feed_rows`, :func:`slice_outputs`). ``on_call`` is told of every
    successful call: request ids, rows per request, the stacked inputs, the outputs, and what each
    request was queued with beside its inputs (its row ids; None when no request of the call has any).
    """

    def __init__(
        self,
        predict: Callable[[Inputs], Outputs],
        max_rows: int,
        on_call: Callable[[list[str], list[int], Inputs, Outputs, list[Any] | None], object] | None = None,
        stack: Callable[[list[Inputs]], Inputs] = _stack,
        rows: Callable[[Inputs], int] = _rows,
        take: Callable[[Outputs, int, int], Outputs] = _slice,
    ) -> None:
        self._predict = predict
        self.max_rows = max_rows
        self.on_call = on_call
        self._stack, self._count, self._take = stack, rows, take
        self.calls = 0
        self._pending: list[Pending[Inputs, Outputs]] = []
        self._scheduled = False

    async def predict(self, matrix: Inputs, request_id: str = "", beside: Any = None) -> Outputs:
        """The outputs for ``matrix``; ``beside`` (the request's row ids) is handed to ``on_call`` with it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        self._pending.append((matrix, future, request_id, beside))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        chunk: list[Pending[Inputs, Outputs]] = []
        rows = 0
        for item in pending:
            count = self._count(item[0])
            if chunk and rows + count > self.max_rows:
                self._run(chunk)
                chunk, rows = [], 0
            chunk.append(item)
            rows += count
        if chunk:
            self._run(chunk)

    def _run(self, chunk: list[Pending[Inputs, Outputs]]) -> None:
        self.calls += 1
        inputs = chunk[0][0] if len(chunk) == 1 else self._stack([item[0] for item in chunk])
        try:
            outputs = self._predict(inputs)
        except Exception as error:  # every request of the call gets the model's error
            for _, future, _, _ in chunk:
                if not future.done():
                    future.set_exception(error)
            return
        counts = [self._count(item[0]) for item in chunk]
        if first_not_finite(outputs) is not None:
            self._answer_each(chunk, counts, inputs, outputs)
            return
        offset = 0
        for (_, future, _, _), count in zip(chunk, counts, strict=True):
            if not future.done():
                future.set_result(self._take(outputs, offset, offset + count))
            offset += count
        if self.on_call is not None:
            besides = [item[3] for item in chunk]
            self.on_call([item[2] for item in chunk], counts, inputs, outputs, besides if any(besides) else None)

    def _answer_each(self, chunk: list[Pending[Inputs, Outputs]], counts: list[int], inputs: Any, outputs: Any) -> None:
        """A call with a non-finite answer in it: each request on its own, those with one refused and not collected."""
        offset = 0
        for (matrix, future, request_id, beside), count in zip(chunk, counts, strict=True):
            answer = self._take(outputs, offset, offset + count)
            row = first_not_finite(answer)
            if row is not None:
                if not future.done():
                    future.set_exception(not_finite_answer(row))
            else:
                if not future.done():
                    future.set_result(answer)
                if self.on_call is not None:
                    self.on_call([request_id], [count], matrix, answer, None if beside is None else [beside])
            offset += count
