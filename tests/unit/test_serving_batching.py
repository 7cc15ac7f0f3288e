"""Micro-batching: concurrent requests share model calls and each gets exactly its own rows back."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serving.batching import MicroBatcher


def row_sums(matrix: np.ndarray) -> np.ndarray:
    return matrix.sum(axis=1)


def test_concurrent_requests_share_calls_and_get_their_own_rows() -> None:
    calls: list[tuple[list[str], list[int]]] = []
    batcher = MicroBatcher(row_sums, max_rows=7, on_call=lambda ids, rows, inputs, outputs: calls.append((ids, rows)))
    matrices = [np.full((1 + n % 3, 2), float(n)) for n in range(10)]

    async def run() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.predict(m, f"r{n}") for n, m in enumerate(matrices)))

    results = asyncio.run(run())
    for matrix, result in zip(matrices, results, strict=True):
        assert np.array_equal(result, matrix.sum(axis=1))
    assert batcher.calls == len(calls) < len(matrices)
    assert all(sum(rows) <= 7 for _, rows in calls)
    assert [request for ids, _ in calls for request in ids] == [f"r{n}" for n in range(10)]


def test_a_failing_call_fails_every_request_in_it() -> None:
    def broken(matrix: np.ndarray) -> np.ndarray:
        raise RuntimeError("model exploded")

    batcher = MicroBatcher(broken, max_rows=100)

    async def run() -> list[object]:
        return await asyncio.gather(*(batcher.predict(np.ones((1, 2))) for _ in range(3)), return_exceptions=True)

    outcomes = asyncio.run(run())
    assert [str(outcome) for outcome in outcomes] == ["model exploded"] * 3


def test_a_lone_request_is_scored_without_waiting_for_company() -> None:
    batcher = MicroBatcher(row_sums, max_rows=100)
    result = asyncio.run(asyncio.wait_for(batcher.predict(np.ones((2, 3))), timeout=1))
    assert result.tolist() == [3.0, 3.0] and batcher.calls == 1


@pytest.mark.parametrize("rows", [1, 5])
def test_a_request_larger_than_the_cap_still_gets_one_call(rows: int) -> None:
    batcher = MicroBatcher(row_sums, max_rows=1)
    assert asyncio.run(batcher.predict(np.ones((rows, 2)))).tolist() == [2.0] * rows
