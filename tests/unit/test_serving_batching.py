"""Micro-batching: concurrent requests share model calls and each gets exactly its own rows back."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serving.batching import MicroBatcher, feed_rows, slice_outputs, stack_feeds
from serving.protocols import RequestError


def row_sums(matrix: np.ndarray) -> np.ndarray:
    return matrix.sum(axis=1)


def test_concurrent_requests_share_calls_and_get_their_own_rows() -> None:
    calls: list[tuple[list[str], list[int]]] = []
    batcher = MicroBatcher(
        row_sums, max_rows=7, on_call=lambda ids, rows, inputs, outputs, beside: calls.append((ids, rows))
    )
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


def test_typed_feeds_are_batched_and_each_request_gets_its_own_outputs() -> None:
    def classify(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        numbers, words = feeds["x"].reshape(-1), feeds["kind"].reshape(-1)
        return {"label": np.array([f"{w}:{n:g}" for n, w in zip(numbers, words, strict=True)], dtype=object),
                "probabilities": np.column_stack([numbers, -numbers])}  # fmt: skip

    batcher = MicroBatcher(classify, max_rows=5, stack=stack_feeds, rows=feed_rows, take=slice_outputs)
    requests = [
        {"x": np.full((1 + n % 2, 1), float(n)), "kind": np.full((1 + n % 2, 1), f"k{n}", dtype=object)}
        for n in range(6)
    ]

    async def run() -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(*(batcher.predict(feeds) for feeds in requests))

    for n, outputs in enumerate(asyncio.run(run())):
        assert outputs["label"].tolist() == [f"k{n}:{n}"] * (1 + n % 2)
        assert outputs["probabilities"].tolist() == [[n, -n]] * (1 + n % 2)
    assert batcher.calls < len(requests)


def test_a_request_whose_answer_is_not_finite_is_refused_alone_and_not_collected() -> None:
    collected: list[str] = []
    batcher = MicroBatcher(
        lambda matrix: matrix[:, 0] * 1e300, max_rows=100, on_call=lambda ids, rows, i, o, beside: collected.extend(ids)
    )

    async def run() -> list[object]:
        requests = [np.array([[1.0]]), np.array([[2.0], [1e10]]), np.array([[3.0]])]
        return await asyncio.gather(
            *(batcher.predict(m, f"r{n}") for n, m in enumerate(requests)), return_exceptions=True
        )

    first, second, third = asyncio.run(run())
    assert batcher.calls == 1
    assert isinstance(first, np.ndarray) and first.tolist() == [1e300]
    assert isinstance(third, np.ndarray) and third.tolist() == [3e300]
    assert isinstance(second, RequestError) and second.status == 422 and "row 1" in second.message
    assert collected == ["r0", "r2"]
