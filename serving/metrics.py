"""Prometheus metrics of one server process, on a registry of its own (no global state).

The request path only bumps plain integers (it runs on the event loop thread alone); the
Prometheus families are built from them when ``/metrics`` is scraped. prometheus_client's own
Counter/Histogram take a lock per update, which costs more than the one-row model call.

With several worker processes, each publishes a snapshot of its counters to a shared folder
every second, and a scrape of any worker sums them all (its own figures live, the others' at
most a second old), so ``/metrics`` describes the whole server whichever worker answers.
"""

from __future__ import annotations

import json
import os
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from serving.collector import RequestCollector

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


Snapshot = dict[str, Any]


class ServerMetrics(Collector):
    """Requests by endpoint and code, errors by code, latency, rows scored, model identity, readiness, collection."""

    def __init__(
        self,
        model: str,
        version: str,
        sha256: str,
        ready: Callable[[], bool] = lambda: True,
        shared_dir: Path | None = None,
    ) -> None:
        self.model, self.version, self.sha256 = model, version, sha256
        self.rows = 0
        self.shared_dir = shared_dir
        self._ready = ready
        self._requests: dict[tuple[str, int], int] = {}
        self._latency: dict[str, list[float]] = {}  # bucket counts, then the sum of seconds
        self._collector: RequestCollector | None = None
        self.model_calls: Callable[[], int] = lambda: 0
        self.unknown_categories: dict[str, int] = {}  # column -> values scored that training never saw
        self._stop = threading.Event()
        self._publisher: threading.Thread | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def observe(self, endpoint: str, code: int, seconds: float) -> None:
        key = (endpoint, code)
        self._requests[key] = self._requests.get(key, 0) + 1
        latency = self._latency.get(endpoint)
        if latency is None:
            latency = self._latency[endpoint] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        latency[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency[-1] += seconds

    def watch(self, collector: RequestCollector) -> None:
        self._collector = collector

    # --- several workers ----------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        collector = self._collector
        return {
            "requests": [[endpoint, code, count] for (endpoint, code), count in self._requests.items()],
            "latency": {endpoint: list(values) for endpoint, values in self._latency.items()},
            "rows": self.rows,
            "model_calls": self.model_calls(),
            "collected": collector.written_rows if collector else 0,
            "dropped": collector.dropped_rows if collector else 0,
            "pending": collector.pending if collector else 0,
            "write_errors": collector.write_errors if collector else 0,
            "last_error": collector.last_error if collector else "",
            "unknown_categories": dict(self.unknown_categories),
        }

    def start_publishing(self, interval: float = 1.0) -> None:
        """Publish this worker's snapshot to ``shared_dir`` every ``interval`` seconds (no-op without one)."""
        if self.shared_dir is None:
            return
        self.shared_dir.mkdir(parents=True, exist_ok=True)
        self._stop.clear()
        self._publisher = threading.Thread(target=self._publish_until_stopped, args=(interval,), daemon=True)
        self._publisher.start()

    def stop_publishing(self) -> None:
        if self._publisher is not None:
            self._stop.set()
            self._publisher.join(5)
            self._publisher = None

    def _publish_until_stopped(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._publish()
        self._publish()

    def _publish(self) -> None:
        assert self.shared_dir is not None
        target = self.shared_dir / f"{os.getpid()}.json"
        scratch = target.with_suffix(".tmp")
        scratch.write_text(json.dumps(self.snapshot()))
        scratch.replace(target)

    def _merged(self) -> Snapshot:
        merged = self.snapshot()
        if self.shared_dir is None:
            return merged
        requests = {(endpoint, code): count for endpoint, code, count in merged["requests"]}
        for path in self.shared_dir.glob("*.json"):
            if path.stem == str(os.getpid()):
                continue
            try:
                other = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # a worker is replacing its file right now; its figures are in the next scrape
            for endpoint, code, count in other["requests"]:
                requests[(endpoint, code)] = requests.get((endpoint, code), 0) + count
            for endpoint, values in other["latency"].items():
                mine = merged["latency"].setdefault(endpoint, [0.0] * len(values))
                merged["latency"][endpoint] = [a + b for a, b in zip(mine, values, strict=True)]
            for key in ("rows", "model_calls", "collected", "dropped", "pending", "write_errors"):
                merged[key] += other.get(key, 0)
            merged["last_error"] = merged["last_error"] or other.get("last_error", "")
            for column, count in other.get("unknown_categories", {}).items():
                merged["unknown_categories"][column] = merged["unknown_categories"].get(column, 0) + count
        merged["requests"] = [[endpoint, code, count] for (endpoint, code), count in requests.items()]
        return merged

    # --- exposition ---------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        figures = self._merged()
        labels = ["model", "version"]
        identity = [self.model, self.version]
        requests = CounterMetricFamily(
            "mlops_serving_requests",
            "Requests answered, by endpoint and HTTP status code.",
            labels=[*labels, "endpoint", "code"],
        )
        errors = CounterMetricFamily(
            "mlops_serving_errors", "Requests answered with an error status, by code.", labels=[*labels, "code"]
        )
        by_code: dict[int, int] = {}
        for endpoint, code, count in sorted(figures["requests"]):
            requests.add_metric([*identity, endpoint, str(code)], count)
            if code >= 400:
                by_code[code] = by_code.get(code, 0) + count
        for code, count in sorted(by_code.items()):
            errors.add_metric([*identity, str(code)], count)
        latency = HistogramMetricFamily(
            "mlops_serving_request_duration_seconds",
            "Time from request start to response, by endpoint.",
            labels=[*labels, "endpoint"],
        )
        for endpoint, values in sorted(figures["latency"].items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip([*map(str, LATENCY_BUCKETS), "+Inf"], values[:-1], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric([*identity, endpoint], buckets, values[-1])
        rows = CounterMetricFamily("mlops_serving_rows_scored", "Rows scored.", labels=labels)
        rows.add_metric(identity, figures["rows"])
        calls = CounterMetricFamily(
            "mlops_serving_model_calls",
            "onnxruntime calls; fewer than requests when concurrent requests were batched.",
            labels=labels,
        )
        calls.add_metric(identity, figures["model_calls"])
        info = GaugeMetricFamily(
            "mlops_serving_model_info", "The model this process serves.", labels=[*labels, "sha256"]
        )
        info.add_metric([*identity, self.sha256], 1)
        ready = GaugeMetricFamily("mlops_serving_ready", "1 once the model is loaded and warmed up.")
        ready.add_metric([], 1 if self._ready() else 0)
        yield from (requests, errors, latency, rows, calls, info, ready)
        if figures["unknown_categories"]:
            unknown = CounterMetricFamily(
                "mlops_serving_unknown_categories",
                "Category values scored that training never saw (one-hot encodes them as none), by column.",
                labels=[*labels, "column"],
            )
            for column, count in sorted(figures["unknown_categories"].items()):
                unknown.add_metric([*identity, column], count)
            yield unknown
        if self._collector is None:
            return
        written = CounterMetricFamily(
            "mlops_serving_collected_rows", "Rows written to collection files.", labels=labels
        )
        written.add_metric(identity, figures["collected"])
        dropped = CounterMetricFamily(
            "mlops_serving_collection_dropped_rows",
            "Rows not collected: the queue was full, or the file system refused them.",
            labels=labels,
        )
        dropped.add_metric(identity, figures["dropped"])
        pending = GaugeMetricFamily(
            "mlops_serving_collection_pending_requests", "Requests waiting to be written.", labels=labels
        )
        pending.add_metric(identity, figures["pending"])
        errors = CounterMetricFamily(
            "mlops_serving_collection_write_errors", "Writes of collection files that failed.", labels=labels
        )
        errors.add_metric(identity, figures["write_errors"])
        yield from (written, dropped, pending, errors)
        if figures["last_error"]:
            last = GaugeMetricFamily(
                "mlops_serving_collection_last_error",
                "The last collection write error (its text in the label; 1 while any occurred).",
                labels=[*labels, "error"],
            )
            last.add_metric([*identity, figures["last_error"]], 1)
            yield last
