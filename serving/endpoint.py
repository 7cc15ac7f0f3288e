"""An endpoint's routing state: its deployments, their traffic weights, and what each one answered.

The routing table is immutable and replaced whole on every change, in one assignment on the
event loop: a request sees either the old table or the new one, never a mix. Statistics per
deployment are plain counters plus a bounded window of recent requests (time, latency, status,
predictions) that the rollout flow reads to compare a canary with the stable deployment.
"""

from __future__ import annotations

import math
import time
import zlib
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from serving.metrics import LATENCY_BUCKETS
from serving.protocols import NOT_FINITE_STATUS

WINDOW_REQUESTS = 200_000
Prediction = float | str  # a value, or a classifier's label
PREDICTIONS_PER_REQUEST = 64


def is_fault(status: int) -> bool:
    """An answer counted against the deployment: a server error, or a model answer that was not finite."""
    return status >= 500 or status == NOT_FINITE_STATUS


NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


class EndpointError(ValueError):
    """An admin change that would leave the endpoint inconsistent (unknown name, no traffic, ...)."""


class InvalidField(EndpointError):
    """A field of an admin request that is malformed (the message names it): the client's error, not a conflict."""


@dataclass(frozen=True)
class Deployment:
    """A running copy of one model version behind the endpoint.

    Attributes:
        name: Unique within the endpoint (``[a-z0-9-_.]``), e.g. ``v3`` or ``canary-4``.
        url: Base URL of its model server, ``http://host:port``.
        version: Registered model version it serves.
        weight: Relative share of live traffic (0 = none).
        shadow: Receives mirrored traffic only; its answers are recorded, never returned.
    """

    name: str
    url: str
    version: str = ""
    weight: int = 0
    shadow: bool = False

    def __post_init__(self) -> None:
        if not self.name or not set(self.name) <= NAME_CHARS:
            raise InvalidField(f"deployment name {self.name!r} must be non-empty [a-z0-9-_.]")
        host, _, port = self.url.removeprefix("http://").rstrip("/").rpartition(":")
        if not self.url.startswith("http://") or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidField(f"deployment {self.name}: url {self.url!r} must be http://host:port (port 1-65535)")
        if self.weight < 0:
            raise InvalidField(f"deployment {self.name}: weight {self.weight} must be >= 0")
        if self.shadow and self.weight:
            raise InvalidField(f"deployment {self.name}: a shadow takes mirrored traffic only (weight must be 0)")

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.url.removeprefix("http://").rstrip("/").rpartition(":")
        return host, int(port)

    @classmethod
    def from_dict(cls, raw: Any) -> Deployment:
        if not isinstance(raw, dict):
            raise InvalidField("a deployment is a JSON object with name and url")
        unknown = set(raw) - {"name", "url", "version", "weight", "shadow"}
        if unknown:
            raise InvalidField(f"unknown deployment field(s): {', '.join(sorted(unknown))}")
        for text in ("name", "url", "version"):
            if (text in raw and not isinstance(raw[text], str | int)) or isinstance(raw.get(text), bool):
                raise InvalidField(f"deployment field {text!r} must be a string, got {raw[text]!r}"[:200])
        if not isinstance(raw.get("shadow", False), bool):
            raise InvalidField(f"deployment field 'shadow' must be true or false, got {raw['shadow']!r}"[:200])
        try:
            return cls(
                name=str(raw["name"]),
                url=str(raw["url"]),
                version=str(raw.get("version", "")),
                weight=_weight(raw.get("weight", 0), str(raw["name"])),
                shadow=bool(raw.get("shadow", False)),
            )
        except KeyError as error:
            raise InvalidField(f"a deployment needs {error.args[0]!r}") from error


def _weight(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidField(f"weight of {name} must be an integer, got {value!r}"[:200])
    return value


def _mirror(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise InvalidField(f"mirror must be a number within [0, 1], got {value!r}"[:200])
    return float(value)


@dataclass(frozen=True)
class RoutingTable:
    """Deployments, weights and mirroring, frozen; ``generation`` counts changes."""

    deployments: tuple[Deployment, ...] = ()
    mirror: float = 0.0
    generation: int = 0
    _cumulative: tuple[int, ...] = field(default=(), compare=False, repr=False)
    _live: tuple[Deployment, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        names = [d.name for d in self.deployments]
        if len(set(names)) != len(names):
            raise EndpointError(f"deployment names must be unique: {names}")
        if not 0.0 <= self.mirror <= 1.0 or math.isnan(self.mirror):
            raise EndpointError(f"mirror share {self.mirror} must be within [0, 1]")
        live = tuple(d for d in self.deployments if d.weight > 0)
        totals, running = [], 0
        for deployment in live:
            running += deployment.weight
            totals.append(running)
        object.__setattr__(self, "_live", live)
        object.__setattr__(self, "_cumulative", tuple(totals))

    @property
    def total_weight(self) -> int:
        return self._cumulative[-1] if self._cumulative else 0

    @property
    def live(self) -> tuple[Deployment, ...]:
        """The deployments taking traffic (weight > 0)."""
        return self._live

    @property
    def shadows(self) -> tuple[Deployment, ...]:
        return tuple(d for d in self.deployments if d.shadow)

    def get(self, name: str) -> Deployment | None:
        return next((d for d in self.deployments if d.name == name), None)

    def choose(self, sticky: bytes | None, draw: float) -> Deployment | None:
        """A live deployment by weight: ``draw`` in [0, 1), or a hash of ``sticky`` so a key keeps its deployment."""
        if not self._live:
            return None
        point = (zlib.crc32(sticky) / 2**32) if sticky is not None else draw
        index = bisect_right(self._cumulative, int(point * self.total_weight))
        return self._live[min(index, len(self._live) - 1)]

    def choose_other(
        self, excluded: str | frozenset[str], draw: float, sticky: bytes | None = None
    ) -> Deployment | None:
        """A live deployment not in ``excluded`` (a name or names), by weight — where to retry a refused request, or
        where to send one while a deployment is out of rotation (``sticky`` keys keep to one of the others)."""
        names = frozenset({excluded}) if isinstance(excluded, str) else excluded
        others = [d for d in self._live if d.name not in names]
        point = ((zlib.crc32(sticky) / 2**32) if sticky is not None else draw) * sum(d.weight for d in others)
        for deployment in others:
            point -= deployment.weight
            if point < 0:
                return deployment
        return others[-1] if others else None

    def serving_version(self, version: str) -> Deployment | None:
        """The live deployment of a version (requests that name one), preferring the heaviest."""
        matches = [d for d in self._live if d.version == version]
        return max(matches, key=lambda d: d.weight) if matches else None

    def with_deployment(self, deployment: Deployment) -> RoutingTable:
        if self.get(deployment.name) is not None:
            raise EndpointError(f"deployment {deployment.name} already exists")
        return replace(self, deployments=(*self.deployments, deployment), generation=self.generation + 1)

    def moved(self, name: str, url: str) -> RoutingTable:
        """The deployment ``name`` at another address (its process restarted), weight and version kept."""
        found = self.get(name)
        if found is None:
            raise EndpointError(f"no deployment named {name}")
        deployments = tuple(replace(d, url=url) if d.name == name else d for d in self.deployments)
        return replace(self, deployments=deployments, generation=self.generation + 1)

    def without(self, name: str) -> RoutingTable:
        if self.get(name) is None:
            raise EndpointError(f"no deployment named {name}")
        kept = tuple(d for d in self.deployments if d.name != name)
        table = replace(self, deployments=kept, generation=self.generation + 1)
        if self.total_weight and not table.total_weight:
            raise EndpointError(f"removing {name} would leave no deployment taking traffic: move the weight first")
        return table

    def with_weights(self, weights: dict[str, Any], mirror: Any = None) -> RoutingTable:
        """New weights for the named deployments (the others keep theirs), all at once."""
        unknown = sorted(set(weights) - {d.name for d in self.deployments})
        if unknown:
            raise EndpointError(f"no deployment named {', '.join(unknown)}")
        deployments = tuple(
            replace(d, weight=_weight(weights[d.name], d.name)) if d.name in weights else d for d in self.deployments
        )
        table = replace(
            self,
            deployments=deployments,
            mirror=self.mirror if mirror is None else _mirror(mirror),
            generation=self.generation + 1,
        )
        if self.deployments and not table.total_weight:
            raise EndpointError("the weights would send traffic nowhere: at least one must be > 0")
        return table

    def to_dict(self) -> dict[str, Any]:
        return {
            "deployments": [asdict(d) for d in self.deployments],
            "mirror": self.mirror,
            "generation": self.generation,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RoutingTable:
        return cls(
            deployments=tuple(Deployment.from_dict(d) for d in raw.get("deployments", [])),
            mirror=float(raw.get("mirror", 0.0)),
            generation=int(raw.get("generation", 0)),
        )


@dataclass
class DeploymentStats:
    """What one deployment answered: counters since start, and a window of recent requests."""

    requests: int = 0
    codes: dict[int, int] = field(default_factory=dict)
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    predictions: int = 0
    prediction_sum: float = 0.0
    mirrored: int = 0
    ejected: bool = False  # out of rotation after consecutive connection failures, until it answers ready again
    ejections: int = 0
    # (epoch seconds, latency seconds, status, predictions) of recent requests, oldest first.
    window: deque[tuple[float, float, int, tuple[Prediction, ...]]] = field(
        default_factory=lambda: deque(maxlen=WINDOW_REQUESTS)
    )
    # (epoch seconds, predictions compared, equal) of mirrored requests: a shadow's answers against the answer
    # the client got for the same request.
    agreements: deque[tuple[float, int, int]] = field(default_factory=lambda: deque(maxlen=WINDOW_REQUESTS))

    def observe(self, status: int, seconds: float, predictions: tuple[Prediction, ...]) -> None:
        self.requests += 1
        self.codes[status] = self.codes.get(status, 0) + 1
        self.latency_buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        if predictions:
            self.predictions += len(predictions)
            self.prediction_sum += sum(value for value in predictions if not isinstance(value, str))
        self.window.append((time.time(), seconds, status, predictions[:PREDICTIONS_PER_REQUEST]))

    def observe_agreement(self, mine: tuple[Prediction, ...], answered: tuple[Prediction, ...]) -> None:
        """Compare a mirrored request's predictions with those the client got (same request, other deployment)."""
        if mine and len(mine) == len(answered):
            self.agreements.append((time.time(), len(mine), sum(a == b for a, b in zip(mine, answered, strict=True))))

    def totals(self) -> dict[str, int]:
        """Cumulative requests and faults (:func:`is_fault`): O(1), for polling."""
        return {"requests": self.requests, "errors": sum(n for code, n in self.codes.items() if is_fault(code))}

    def since(self, start: float, max_predictions: int = 20_000) -> dict[str, Any]:
        """Requests, faults, latency percentiles (of answers other than client errors) and predictions observed at or
        after ``start`` (epoch)."""
        recent = []
        for entry in reversed(self.window):  # newest first: stop at the window's start
            if entry[0] < start:
                break
            recent.append(entry)
        recent.reverse()
        # latency of what the deployment answered: a client's bad request (a 4xx other than a model fault) says
        # how long the client took to send it, not how fast the deployment is
        latencies = sorted(entry[1] for entry in recent if not 400 <= entry[2] < 500 or is_fault(entry[2]))
        codes: dict[str, int] = {}
        for entry in recent:
            codes[str(entry[2])] = codes.get(str(entry[2]), 0) + 1
        predictions = [value for entry in recent if entry[2] == 200 for value in entry[3]]
        compared = equal = 0
        for when, count, same in reversed(self.agreements):
            if when < start:
                break
            compared, equal = compared + count, equal + same
        return {
            "requests": len(recent),
            "codes": codes,
            "errors": sum(count for code, count in codes.items() if is_fault(int(code))),
            "p50_ms": _percentile(latencies, 0.50) * 1000,
            "p99_ms": _percentile(latencies, 0.99) * 1000,
            "predictions": predictions[-max_predictions:],
            "agreement": {"compared": compared, "equal": equal},
        }


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class EndpointMetrics(Collector):
    """Per-deployment Prometheus families, built from the plain counters when scraped."""

    def __init__(self, model: str, table: Any, stats: dict[str, DeploymentStats]) -> None:
        self.model = model
        self._table = table  # callable returning the current RoutingTable
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        table: RoutingTable = self._table()
        labels = ["model", "deployment", "version"]
        requests = CounterMetricFamily(
            "mlops_endpoint_requests", "Requests by deployment and code", labels=[*labels, "code"]
        )
        errors = CounterMetricFamily(
            "mlops_endpoint_errors", "5xx and not-finite (422) answers by deployment", labels=labels
        )
        latency = HistogramMetricFamily("mlops_endpoint_latency_seconds", "Router-observed latency", labels=labels)
        predicted = CounterMetricFamily("mlops_endpoint_predictions", "Predictions returned", labels=labels)
        prediction_sum = CounterMetricFamily("mlops_endpoint_prediction_sum", "Sum of predictions", labels=labels)
        mirrored = CounterMetricFamily("mlops_endpoint_mirrored", "Mirrored requests sent", labels=labels)
        weight = GaugeMetricFamily("mlops_endpoint_weight", "Traffic weight (shadows: 0)", labels=[*labels, "shadow"])
        ejected = GaugeMetricFamily(
            "mlops_endpoint_ejected", "1 while out of rotation after consecutive connection failures", labels=labels
        )
        ejections = CounterMetricFamily("mlops_endpoint_ejections", "Times taken out of rotation", labels=labels)
        for deployment in table.deployments:
            values = [self.model, deployment.name, deployment.version]
            weight.add_metric([*values, str(deployment.shadow).lower()], deployment.weight)
            stats = self._stats.get(deployment.name)
            if stats is None:
                continue
            for code, count in sorted(stats.codes.items()):
                requests.add_metric([*values, str(code)], count)
            errors.add_metric(values, sum(c for code, c in stats.codes.items() if is_fault(code)))
            running, buckets = 0, []
            for bound, count in zip([*map(str, LATENCY_BUCKETS), "+Inf"], stats.latency_buckets, strict=True):
                running += count
                buckets.append((bound, running))
            latency.add_metric(values, buckets, stats.latency_sum)
            predicted.add_metric(values, stats.predictions)
            prediction_sum.add_metric(values, stats.prediction_sum)
            mirrored.add_metric(values, stats.mirrored)
            ejected.add_metric(values, 1 if stats.ejected else 0)
            ejections.add_metric(values, stats.ejections)
        yield from (requests, errors, latency, predicted, prediction_sum, mirrored, weight, ejected, ejections)
