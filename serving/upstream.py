"""A lean HTTP/1.1 client for the router: keep-alive connection pools to model servers.

General-purpose clients (httpx, aiohttp) cost more per request than a one-row prediction does.
This one speaks only what the model servers speak — requests with a ``Content-Length`` body,
responses with one — over asyncio protocols with httptools' C parser, and keeps idle
connections per upstream. A request that fails on a reused connection before any response byte
arrived (the server closed it while idle) is retried once on a fresh one; predictions are pure,
so that retry is safe.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httptools


class UpstreamError(ConnectionError):
    """The upstream could not be reached, closed the connection, or sent something unparsable."""


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: Any = None  # asyncio's or uvloop's transport (not an asyncio.Transport subclass)
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Response] | None = None
        self.response = Response(0)
        self.chunks: list[bytes] = []
        self.closed = False
        self.keep_alive = True
        self.used = 0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(UpstreamError(f"unparsable response: {error}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(UpstreamError(f"connection closed by upstream{f': {exc}' if exc else ''}"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.response.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.response.status = self.parser.get_status_code()
        self.response.body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.keep_alive = self.parser.should_keep_alive()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.response)

    def _fail(self, error: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)

    def send(self, data: bytes) -> asyncio.Future[Response]:
        if self.transport is None or self.closed:
            raise UpstreamError("connection is closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.response, self.chunks = Response(0), []
        self.used += 1
        self.transport.write(data)
        return self.waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Upstream:
    """Connections to one model server at ``host:port``.

    Args:
        host: The server's address.
        port: Its port.
        max_idle: Idle connections kept for reuse; more may be open while busy.
        connect_timeout: Seconds to establish a connection.
    """

    def __init__(self, host: str, port: int, max_idle: int = 64, connect_timeout: float = 2.0) -> None:
        self.host, self.port = host, port
        self.max_idle, self.connect_timeout = max_idle, connect_timeout
        self._idle: list[_Connection] = []
        self._host_header = f"Host: {host}:{port}\r\n".encode()
        self.in_flight = 0

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(_Connection, self.host, self.port)
        except (OSError, TimeoutError) as error:
            raise UpstreamError(f"cannot connect to {self.host}:{self.port}: {error or 'timed out'}") from error
        return connection

    async def request(self, method: bytes, target: bytes, headers: bytes, body: bytes, timeout: float) -> Response:
        """Send one request (``headers``: raw ``Name: value\\r\\n`` lines) and return the whole response.

        Raises:
            UpstreamError: Connecting, sending or reading failed.
            TimeoutError: No complete response within ``timeout`` seconds.
        """
        data = b"".join(
            (
                method,
                b" ",
                target,
                b" HTTP/1.1\r\n",
                self._host_header,
                headers,
                b"Content-Length: ",
                str(len(body)).encode(),
                b"\r\n\r\n",
                body,
            )
        )
        self.in_flight += 1
        try:
            async with asyncio.timeout(timeout):
                while True:
                    reused = bool(self._idle)
                    connection = self._idle.pop() if reused else await self._open()
                    if connection.closed:
                        continue
                    try:
                        response = await connection.send(data)
                    except UpstreamError:
                        connection.close()
                        if reused:
                            continue  # the server closed it while idle: try the next one, or a fresh one
                        raise
                    except BaseException:  # timed out or cancelled mid-response: never reuse it
                        connection.close()
                        raise
                    self._release(connection)
                    return response
        finally:
            self.in_flight -= 1

    def _release(self, connection: _Connection) -> None:
        if connection.keep_alive and not connection.closed and len(self._idle) < self.max_idle:
            self._idle.append(connection)
        else:
            connection.close()

    def close(self) -> None:
        """Close idle connections (busy ones close when their request ends and finds the pool closed)."""
        self.max_idle = 0
        for connection in self._idle:
            connection.close()
        self._idle.clear()
