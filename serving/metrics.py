"""Prometheus metrics of one server process, on a registry of its own (no global state)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from serving.collector import RequestCollector

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServerMetrics:
    """Requests by endpoint and code, errors by code, latency, rows scored, model identity, collection."""

    def __init__(self, model: str, version: str, sha256: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.model, self.version = model, version
        self.requests = Counter(
            "mlops_serving_requests",
            "Requests answered, by endpoint and HTTP status code.",
            ["model", "version", "endpoint", "code"],
            registry=self.registry,
        )
        self.errors = Counter(
            "mlops_serving_errors",
            "Requests answered with an error status, by code.",
            ["model", "version", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mlops_serving_request_duration_seconds",
            "Time from request start to response, by endpoint.",
            ["model", "version", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rows = Counter(
            "mlops_serving_rows_scored", "Rows scored.", ["model", "version"], registry=self.registry
        ).labels(model, version)
        self.ready = Gauge("mlops_serving_ready", "1 once the model is loaded and warmed up.", registry=self.registry)
        Gauge(
            "mlops_serving_model_info",
            "The model this process serves.",
            ["model", "version", "sha256"],
            registry=self.registry,
        ).labels(model, version, sha256).set(1)
        self._children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def observe(self, endpoint: str, code: int, seconds: float) -> None:
        children = self._children.get((endpoint, code))
        if children is None:
            children = (
                self.requests.labels(self.model, self.version, endpoint, str(code)),
                self.latency.labels(self.model, self.version, endpoint),
            )
            self._children[(endpoint, code)] = children
        children[0].inc()
        children[1].observe(seconds)
        if code >= 400:
            self.errors.labels(self.model, self.version, str(code)).inc()

    def watch(self, collector: RequestCollector) -> None:
        self.registry.register(_CollectionMetrics(collector, self.model, self.version))


class _CollectionMetrics(Collector):
    """Collection counters read from the collector at scrape time."""

    def __init__(self, collector: RequestCollector, model: str, version: str) -> None:
        self.collector, self.labels = collector, [model, version]

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        written = CounterMetricFamily(
            "mlops_serving_collected_rows", "Rows written to collection files.", labels=["model", "version"]
        )
        written.add_metric(self.labels, self.collector.written_rows)
        dropped = CounterMetricFamily(
            "mlops_serving_collection_dropped_rows",
            "Rows not collected because the queue was full.",
            labels=["model", "version"],
        )
        dropped.add_metric(self.labels, self.collector.dropped_rows)
        pending = GaugeMetricFamily(
            "mlops_serving_collection_pending_requests", "Requests waiting to be written.", labels=["model", "version"]
        )
        pending.add_metric(self.labels, self.collector.pending)
        yield from (written, dropped, pending)
