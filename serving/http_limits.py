"""uvicorn's httptools protocol with the bounds it lacks: header size and count, and read timeouts.

Measured before: one connection sending 256 MiB of header lines grew a server to 731 MB with no
answer, and a connection that never finished its request was held forever. Here:

- request line + headers larger than ``MAX_HEADER_BYTES`` or more than ``MAX_HEADERS`` lines:
  ``431 Request Header Fields Too Large`` and the connection is closed, as soon as the bound is
  crossed (at most one more read is buffered);
- headers not complete ``header_timeout`` seconds after a request began (or after the connection
  opened, for one that sends nothing): ``408 Request Timeout``, connection closed;
- a body not complete ``body_timeout`` seconds after its headers: the connection is closed (the
  app sees the client disconnect).

The timeouts come from ``MLOPS_HTTP_HEADER_TIMEOUT`` / ``MLOPS_HTTP_BODY_TIMEOUT`` (seconds),
read when a connection opens, so server worker processes spawned by uvicorn get them too.
Both the model server and the endpoint router run on this protocol (``uvicorn.Config(http=...)``).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 100
HEADER_TIMEOUT_ENV = "MLOPS_HTTP_HEADER_TIMEOUT"
BODY_TIMEOUT_ENV = "MLOPS_HTTP_BODY_TIMEOUT"
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 60.0


IDLE, HEADERS, BODY = 0, 1, 2


class _HeadersTooLarge(Exception):
    """Raised inside the parser's callbacks; ``data_received`` answers 431."""


SWEEP_SECONDS = 0.25
TOO_MANY_LINES = f"more than {MAX_HEADERS} header lines"
TOO_LARGE = f"request line and headers exceed {MAX_HEADER_BYTES} bytes"


def _plain(status: bytes, message: str) -> bytes:
    body = message.encode()
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
    )


def _seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


class BoundedHttpProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` with bounded headers and read timeouts (see the module doc).

    Cheap on the hot path (measured: a timer per request cost a quarter of a one-row server's
    throughput): a request only records its phase and when it entered it, header bytes and lines
    are counted per read while they are incomplete (a request whose headers all arrive in one read is
    measured once, when they are complete), and one
    sweep per event loop every ``SWEEP_SECONDS`` closes the connections whose phase outlived its
    timeout.
    """

    _sweeping: ClassVar[set[asyncio.AbstractEventLoop]] = set()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = _seconds(HEADER_TIMEOUT_ENV, DEFAULT_HEADER_TIMEOUT)
        self.body_timeout = _seconds(BODY_TIMEOUT_ENV, DEFAULT_BODY_TIMEOUT)
        self._phase = HEADERS
        self._since = 0.0
        self._header_bytes = 0
        self._header_lines = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._since = self.loop.time()  # a connection that sends nothing waits for headers
        if self.loop not in self._sweeping:
            self._sweeping.add(self.loop)
            self.loop.call_later(SWEEP_SECONDS, self._sweep, self.server_state.connections)

    def _sweep(self, connections: set[Any]) -> None:
        """Close every connection of this loop whose request phase outlived its timeout; run again."""
        now = self.loop.time()
        for connection in list(connections):
            if isinstance(connection, BoundedHttpProtocol) and not connection.transport.is_closing():
                connection._expire(now)
        self.loop.call_later(SWEEP_SECONDS, self._sweep, connections)

    def _expire(self, now: float) -> None:
        if self._phase == HEADERS and now - self._since > self.header_timeout:
            message = f"request headers not received within {self.header_timeout:g} s"
            self.transport.write(_plain(b"408 Request Timeout", message))
            self.transport.close()
        elif self._phase == BODY and now - self._since > self.body_timeout:
            self.logger.info("closing a connection whose request body did not arrive within %g s", self.body_timeout)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        """uvicorn's (its errors answered alike), with a 431 for a header bound crossed; then, while a request's
        headers are still incomplete after a read, their bytes and lines so far are bounded."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            if isinstance(error.__context__, _HeadersTooLarge):
                self._refuse_headers(str(error.__context__))
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserError:
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._phase != HEADERS or self.transport.is_closing():
            return
        self._header_bytes += len(data)
        self._header_lines += data.count(b"\n")
        if self._header_bytes > MAX_HEADER_BYTES:
            self._refuse_headers(TOO_LARGE)
        elif self._header_lines > MAX_HEADERS + 1:  # the request line, then the headers
            self._refuse_headers(TOO_MANY_LINES)

    def _refuse_headers(self, message: str) -> None:
        self._phase = IDLE
        self.transport.write(_plain(b"431 Request Header Fields Too Large", message))
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase, self._since = HEADERS, self.loop.time()
        self._header_bytes = self._header_lines = 0

    def on_headers_complete(self) -> None:
        # Headers that all arrived in one read (up to 256 KiB) were not bounded by data_received: bound them here.
        if len(self.headers) > MAX_HEADERS:
            raise _HeadersTooLarge(TOO_MANY_LINES)
        if sum(len(name) + len(value) + 4 for name, value in self.headers) > MAX_HEADER_BYTES:
            raise _HeadersTooLarge(TOO_LARGE)
        self._phase, self._since = BODY, self.loop.time()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._phase = IDLE  # from here uvicorn's keep-alive timeout watches the connection
        super().on_message_complete()
