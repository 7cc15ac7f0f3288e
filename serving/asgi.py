"""ASGI plumbing shared by the model server and the endpoint router: requests, replies, errors, auth.

Plain ASGI rather than a framework: on the one-row request that dominates online traffic,
framework request/response objects cost more than the model does.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from serving.protocols import RequestError

JSON = b"application/json"

Style = Literal["v2", "mlflow"]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: bytes = JSON
    headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True)
class Request:
    """What a handler sees: path parameters, headers, and the body (read lazily, within limits)."""

    scope: Scope
    receive: Receive
    params: dict[str, str]
    request_id: str
    max_body_bytes: int

    def header(self, name: bytes) -> str | None:
        for key, value in self.scope["headers"]:
            if key == name:
                return str(value.decode("latin-1"))
        return None

    async def body(self) -> bytes:
        encoding = self.header(b"content-encoding")
        if encoding is not None and encoding.strip().lower() not in ("", "identity"):
            raise RequestError(415, f"content-encoding {encoding!r} is not supported: send the body uncompressed")
        declared = self.header(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise RequestError(413, f"request body of {declared} bytes exceeds the limit of {self.max_body_bytes}")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise RequestError(400, "client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_body_bytes:
                raise RequestError(413, f"request body exceeds the limit of {self.max_body_bytes} bytes")
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


Handler = Callable[[Request], Awaitable[Reply]]


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    handler: Handler
    style: Style = "v2"
    protected: bool = True


def dumps(content: Any) -> bytes:
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error_reply(style: Style, status: int, message: str) -> Reply:
    """KServe/OIP clients read ``error``; MLflow clients read ``error_code`` and ``message``."""
    if style == "mlflow":
        code = {
            400: "BAD_REQUEST",
            401: "UNAUTHENTICATED",
            404: "RESOURCE_DOES_NOT_EXIST",
            413: "BAD_REQUEST",
            422: "INVALID_PARAMETER_VALUE",
        }
        return Reply(status, dumps({"error_code": code.get(status, "INTERNAL_ERROR"), "message": message}))
    return Reply(status, dumps({"error": message}))


def bearer(token: str | None) -> bytes | None:
    """The exact ``Authorization`` header value a token requires (None: no auth)."""
    return f"Bearer {token}".encode() if token else None


def authorize(scope: Scope, expected: bytes | None) -> None:
    """Raise 401 unless the request carries the expected bearer token (no-op when ``expected`` is None). The scheme
    name is case-insensitive (RFC 7235: ``bearer``, ``BEARER``); the token is compared in constant time."""
    if expected is None:
        return
    given = next((value for key, value in scope["headers"] if key == b"authorization"), None)
    if given is None:
        raise RequestError(401, "missing bearer token: send 'Authorization: Bearer <token>'")
    scheme, _, token = given.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), expected[len(b"Bearer ") :]):
        raise RequestError(401, "invalid bearer token")


async def send_reply(send: Send, reply: Reply, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", reply.content_type), (b"content-length", str(len(reply.body)).encode())]
    headers.extend(reply.headers)
    if extra:
        headers.extend(extra)
    if reply.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})
