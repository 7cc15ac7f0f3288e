"""A bounded load generator on loopback: steady traffic for tests, rollouts and the demo.

``TrafficResult`` counts every answer by status and by the deployment that gave it
(``x-mlops-deployment``), and every connection error, so a test can say "zero 5xx and zero
connection errors" and mean it.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class TrafficResult:
    statuses: Counter[int] = field(default_factory=Counter)
    deployments: Counter[str] = field(default_factory=Counter)
    connection_errors: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + self.connection_errors

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)


async def _worker(
    client: httpx.AsyncClient,
    url: str,
    body: Callable[[random.Random], Any],
    until: float,
    stop: threading.Event,
    result: TrafficResult,
    seed: int,
    pause: float,
) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until and not stop.is_set():
        started = time.perf_counter()
        try:
            response = await client.post(url, json=body(rng))
        except httpx.TransportError as error:
            result.connection_errors += 1
            result.errors.append(f"{type(error).__name__}: {error}")
        else:
            result.latencies.append(time.perf_counter() - started)
            result.statuses[response.status_code] += 1
            result.deployments[response.headers.get("x-mlops-deployment", "")] += 1
            if response.status_code >= 500:
                result.errors.append(f"{response.status_code}: {response.text[:200]}")
        if pause:
            await asyncio.sleep(pause)


async def send_traffic(
    url: str,
    body: Callable[[random.Random], Any],
    seconds: float,
    concurrency: int = 4,
    pause: float = 0.0,
    stop: threading.Event | None = None,
    headers: dict[str, str] | None = None,
    result: TrafficResult | None = None,
) -> TrafficResult:
    """POST ``body(rng)`` to ``url`` from ``concurrency`` workers for at most ``seconds`` (or until ``stop``).

    Counts go into ``result`` (a new one by default) as they happen, so a caller can watch them.
    """
    result = result if result is not None else TrafficResult()
    until = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=10.0, limits=limits, headers=headers) as client:
        await asyncio.gather(
            *(
                _worker(client, url, body, until, stop or threading.Event(), result, seed, pause)
                for seed in range(concurrency)
            )
        )
    return result


class BackgroundTraffic:
    """``send_traffic`` in a thread: ``with BackgroundTraffic(...) as traffic: ...; traffic.result``."""

    def __init__(self, url: str, body: Callable[[random.Random], Any], max_seconds: float, **options: Any) -> None:
        self._stop = threading.Event()
        self._args = (url, body, max_seconds)
        self._options = options
        self.result = TrafficResult()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _run(self) -> None:
        asyncio.run(send_traffic(*self._args, stop=self._stop, result=self.result, **self._options))

    def __enter__(self) -> BackgroundTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
