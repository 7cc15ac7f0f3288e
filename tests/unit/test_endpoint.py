"""The routing table and the prediction reader, without processes."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import numpy as np
import pytest

from serving.endpoint import Deployment, DeploymentStats, EndpointError, RoutingTable
from serving.router import predictions_of

A = Deployment("a", "http://127.0.0.1:1001", "1", 90)
B = Deployment("b", "http://127.0.0.1:1002", "2", 10)


def test_weights_split_draws_in_proportion_and_sticky_keys_stay_put() -> None:
    table = RoutingTable((A, B))
    rng = random.Random(0)
    picks = [table.choose(None, rng.random()) for _ in range(10_000)]
    share = sum(1 for p in picks if p is B) / len(picks)
    assert 0.08 < share < 0.12
    for key in (b"user-1", b"user-2", b"zz"):
        assert len({table.choose(key, rng.random()) for _ in range(50)}) == 1
    assert RoutingTable((A, B)).with_weights({"a": 0}).choose(None, 0.0) is B
    assert RoutingTable().choose(None, 0.5) is None
    assert {table.choose_other("a", rng.random()) for _ in range(50)} == {B}
    assert RoutingTable((A,)).choose_other("a", 0.3) is None


def test_changes_make_new_tables_and_refuse_inconsistent_ones() -> None:
    table = RoutingTable((A,))
    grown = table.with_deployment(B)
    assert table.deployments == (A,) and grown.generation == 1
    assert grown.with_weights({"a": 0, "b": 5}).total_weight == 5
    with pytest.raises(EndpointError, match="already exists"):
        grown.with_deployment(B)
    with pytest.raises(EndpointError, match="no deployment named c"):
        grown.with_weights({"c": 1})
    with pytest.raises(EndpointError, match="traffic nowhere"):
        grown.with_weights({"a": 0, "b": 0})
    with pytest.raises(EndpointError, match="integer"):
        grown.with_weights({"a": "50"})
    with pytest.raises(EndpointError, match="move the weight first"):
        grown.with_weights({"b": 0}).without("a")
    assert grown.without("b").deployments == (A,)
    with pytest.raises(EndpointError, match="within"):
        grown.with_weights({}, mirror=1.5)
    assert RoutingTable.from_dict(grown.to_dict()) == grown
    moved = grown.moved("a", "http://127.0.0.1:9999")
    assert moved.get("a") == replace(A, url="http://127.0.0.1:9999") and moved.get("b") == B
    with pytest.raises(EndpointError, match="no deployment named c"):
        grown.moved("c", "http://127.0.0.1:9999")


def test_deployments_are_validated() -> None:
    with pytest.raises(EndpointError, match="name"):
        Deployment("Bad Name", "http://127.0.0.1:1")
    with pytest.raises(EndpointError, match="http://host:port"):
        Deployment("a", "127.0.0.1:1")
    with pytest.raises(EndpointError, match="mirrored traffic only"):
        Deployment("s", "http://127.0.0.1:1", weight=1, shadow=True)
    with pytest.raises(EndpointError, match="unknown deployment field"):
        Deployment.from_dict({"name": "a", "url": "http://127.0.0.1:1", "weigth": 3})
    assert Deployment.from_dict({"name": "a", "url": "http://127.0.0.1:1"}).address == ("127.0.0.1", 1)


def test_predictions_are_read_from_either_protocol() -> None:
    assert predictions_of(b'{"predictions": [1.5, 2]}') == (1.5, 2.0)
    assert predictions_of(b'{"outputs": [{"name": "variable", "data": [3.0, 4.0]}]}') == (3.0, 4.0)
    assert predictions_of(b'{"predictions": [[1.0], [2.0]]}') == (1.0, 2.0)
    assert predictions_of(b"not json") == ()
    assert predictions_of(b'{"error": "x"}') == ()
    output = {"name": "variable", "datatype": "FP64", "shape": [2, 1], "parameters": {"binary_data_size": 16}}
    head = json.dumps({"outputs": [output]}).encode()
    binary = head + np.array([5.0, 6.5]).tobytes()
    assert predictions_of(binary, str(len(head)).encode()) == (5.0, 6.5)
    assert predictions_of(binary, b"x") == ()
    assert predictions_of(binary, str(len(head) + 1000).encode()) == ()


def test_window_statistics_cover_only_the_asked_period() -> None:
    stats = DeploymentStats()
    stats.observe(200, 0.002, (1.0, 2.0))
    stats.observe(503, 0.010, ())
    window = stats.since(0)
    assert window["requests"] == 2 and window["errors"] == 1 and window["codes"] == {"200": 1, "503": 1}
    assert window["predictions"] == [1.0, 2.0]
    assert window["p99_ms"] == pytest.approx(10.0)
    assert stats.since(1e12)["requests"] == 0
