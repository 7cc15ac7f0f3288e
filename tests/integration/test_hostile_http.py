"""Hostile connections against the real model server and the real router in front of it, over raw sockets:
header floods get 431 as soon as the bound is crossed, slow or stalled requests are closed, and both keep
answering everyone else."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from serving.http_limits import MAX_HEADER_BYTES, MAX_HEADERS
from tests.conftest import TINY_FEATURES, python_server, serving_process, write_tiny_bundle
from tests.integration.hostile import Fuzz, connect, read_all

TIMEOUT_S = 1.0
INFER = b'{"instances": [[1.0, 2.0, 3.0]]}'


@pytest.fixture(scope="module")
def urls(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The model server and a router to it, both with 1 s header and body timeouts."""
    bundle = write_tiny_bundle(tmp_path_factory.mktemp("hostile") / "tiny", tiny_model)
    env = {**os.environ, "MLOPS_HTTP_HEADER_TIMEOUT": str(TIMEOUT_S), "MLOPS_HTTP_BODY_TIMEOUT": str(TIMEOUT_S)}
    with ExitStack() as stack:
        server = stack.enter_context(serving_process(bundle, env=env))
        state = tmp_path_factory.mktemp("router") / "table.json"
        router_env = {**env, "MLOPS_ROUTER_ADMIN_TOKEN": "t", "MLOPS_ROUTER_STATE_FILE": str(state)}
        args = ["-m", "serving.router", "--model", "tiny", "--deployment", f"v7={server}@100:7"]
        router = stack.enter_context(python_server(args, "/v2/health/ready", router_env))
        yield {"server": server, "router": router}


def still_answers(url: str) -> bool:
    reply = httpx.post(f"{url}/invocations", content=INFER, headers={"content-type": "application/json"})
    return reply.status_code == 200


@pytest.mark.parametrize("target", ["server", "router"])
def test_a_header_flood_gets_431_as_soon_as_the_bound_is_crossed(urls: dict[str, str], target: str) -> None:
    sock = connect(urls[target])
    sock.sendall(b"POST /invocations HTTP/1.1\r\nhost: x\r\n")
    line = b"x-flood: " + b"a" * 1000 + b"\r\n"
    sent = 0
    try:
        for _ in range(50_000):  # 50 MB if nobody stopped us
            sock.sendall(line)
            sent += len(line)
    except (BrokenPipeError, ConnectionResetError):
        pass
    reply = read_all(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 431"), reply[:200]
    assert f"exceed {MAX_HEADER_BYTES} bytes".encode() in reply
    assert sent < 20_000_000, f"the peer kept reading: {sent} bytes of headers accepted"
    assert still_answers(urls[target])


@pytest.mark.parametrize("target", ["server", "router"])
def test_too_many_header_lines_get_431(urls: dict[str, str], target: str) -> None:
    sock = connect(urls[target])
    headers = b"".join(b"x-h%d: 1\r\n" % number for number in range(MAX_HEADERS + 1))
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n" + headers + b"\r\n")
    reply = read_all(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 431") and f"more than {MAX_HEADERS} header lines".encode() in reply


@pytest.mark.parametrize("target", ["server", "router"])
@pytest.mark.parametrize("sent", [b"", b"POST /invocations HTTP/1.1\r\nhost: x\r\ncontent-"], ids=["idle", "partial"])
def test_a_request_whose_headers_never_finish_is_answered_408_and_closed(
    urls: dict[str, str], target: str, sent: bytes
) -> None:
    sock = connect(urls[target])
    started = time.monotonic()
    sock.sendall(sent)
    reply = read_all(sock)
    waited = time.monotonic() - started
    sock.close()
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert TIMEOUT_S * 0.8 <= waited < TIMEOUT_S + 5


@pytest.mark.parametrize("target", ["server", "router"])
def test_a_body_that_never_finishes_is_closed_and_the_server_keeps_answering(urls: dict[str, str], target: str) -> None:
    sockets = [connect(urls[target]) for _ in range(20)]
    started = time.monotonic()
    for sock in sockets:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 1000\r\n\r\n" + INFER[:10]
        )
    assert still_answers(urls[target])  # while 20 bodies hang
    replies = [read_all(sock) for sock in sockets]
    waited = time.monotonic() - started
    for sock in sockets:
        sock.close()
    assert waited < TIMEOUT_S + 8, f"connections held for {waited:.1f} s"
    assert all(not reply.startswith(b"HTTP/1.1 200") for reply in replies)
    assert still_answers(urls[target])


def test_the_bounds_do_not_touch_a_normal_keep_alive_client(urls: dict[str, str]) -> None:
    with httpx.Client() as client:
        for _ in range(3):
            assert client.post(f"{urls['router']}/invocations", content=INFER).status_code == 200
            time.sleep(TIMEOUT_S * 0.4)  # idle between requests, under the keep-alive timeout


def test_a_fuzz_run_of_nesting_numbers_and_headers_gets_no_5xx_from_server_or_router(urls: dict[str, str]) -> None:
    with Fuzz(lambda: list(urls.values()), [1.0, 2.0, 3.0], list(TINY_FEATURES), "tiny", seed=1, pause=0) as fuzz:
        time.sleep(8)
    result = fuzz.result
    assert result.unexpected == [], result.unexpected[:10]
    assert all(result.count(kind) > 20 for kind in ("nesting", "number", "header")), result.outcomes
    assert {status for _, status in result.outcomes} <= {200, 400, 422, 431}
    assert all(still_answers(url) for url in urls.values())
