"""Hostile requests over raw sockets, and a seeded fuzz client built from them.

The fuzz cases are the three families the servers must answer without a 5xx: JSON nested beyond the
depth limit (whole body, inside a row, inside ``dataframe_split`` or v2 ``data``), numbers at and beyond
the edges of a double (overflow, NaN, infinities, 5,000-digit integers, numbers as strings), and header
floods (too long, too many). Each case carries the answers it may get.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from serving.http_limits import MAX_HEADER_BYTES, MAX_HEADERS

NUMBERS = (
    "1e308", "-1e308", "1.7976931348623157e308", "1e400", "-1e400", "NaN", "Infinity", "-Infinity",
    "1" + "0" * 400, "9" * 5000, "5e-324", "1e-400", "-0.0", '"1e309"', '"nan"', "null", "true", "[]", "{}",
)  # fmt: skip
DEPTHS = (33, 64, 1000, 100_000)


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=10)


def read_all(sock: socket.socket, seconds: float = 10.0) -> bytes:
    """Everything the peer sends until it closes (or ``seconds`` pass)."""
    sock.settimeout(seconds)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def read_response(sock: socket.socket, seconds: float = 10.0) -> bytes:
    """One HTTP/1.1 response on a keep-alive connection: its head, then ``content-length`` bytes of body (a
    response may arrive in several segments)."""
    sock.settimeout(seconds)
    reply = b""
    while b"\r\n\r\n" not in reply and (chunk := sock.recv(65536)):
        reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")), 0
    )
    while len(body) < length and (chunk := sock.recv(65536)):
        body += chunk
    return head + b"\r\n\r\n" + body


@dataclass(frozen=True)
class Case:
    kind: str  # nesting | number | header
    what: str
    path: str
    body: bytes
    allowed: frozenset[int]
    headers: tuple[bytes, ...] = ()

    def request(self) -> bytes:
        head = [
            b"POST %s HTTP/1.1" % self.path.encode(),
            b"host: fuzz",
            b"content-type: application/json",
            b"content-length: %d" % len(self.body),
            b"connection: close",
            *self.headers,
        ]
        return b"\r\n".join(head) + b"\r\n\r\n" + self.body


def _body(form: str, values: list[str], columns: list[str], model: str) -> tuple[str, bytes]:
    """``values`` (JSON literals, possibly nested) as one row in request format ``form``."""
    row = "[" + ", ".join(values) + "]"
    if form == "instances":
        return "/invocations", b'{"instances": [%s]}' % row.encode()
    if form == "dataframe_split":
        return "/invocations", b'{"dataframe_split": {"columns": %s, "data": [%s]}}' % (
            json.dumps(columns).encode(),
            row.encode(),
        )
    tensor = f'{{"name": "input", "shape": [1, {len(values)}], "datatype": "FP64", "data": {row}}}'
    return f"/v2/models/{model}/infer", f'{{"inputs": [{tensor}]}}'.encode()


def hostile_case(rng: random.Random, row: list[float], columns: list[str], model: str) -> Case:
    """One random case: deep nesting, an edge-of-double number, or a header flood."""
    kind = rng.choice(("nesting", "number", "header"))
    values = [repr(float(value)) for value in row]
    form = rng.choice(("instances", "dataframe_split", "v2"))
    if kind == "nesting":
        depth = rng.choice(DEPTHS)
        where = rng.choice(("body", "row"))
        if where == "body":
            return Case(kind, f"body nested {depth}", "/invocations", b"[" * depth + b"]" * depth, frozenset({400}))
        at = rng.randrange(len(values))
        values[at] = "[" * depth + values[at] + "]" * depth
        path, body = _body(form, values, columns, model)
        return Case(kind, f"{form} value nested {depth}", path, body, frozenset({400}))
    if kind == "number":
        literal = rng.choice(NUMBERS)
        for at in rng.sample(range(len(values)), rng.randint(1, len(values))):
            values[at] = literal
        path, body = _body(form, values, columns, model)
        return Case(kind, f"{form} with {literal[:12]}", path, body, frozenset({200, 400, 422}))
    path, body = _body(form, values, columns, model)
    flood = rng.choice(("long", "many", "legal"))
    if flood == "long":
        size = MAX_HEADER_BYTES + rng.randint(1, 4 * MAX_HEADER_BYTES)
        return Case(kind, f"one {size}-byte header", path, body, frozenset({431}), (b"x-long: " + b"a" * size,))
    if flood == "many":
        count = MAX_HEADERS + rng.randint(1, 200)
        lines = tuple(b"x-h%d: %d" % (number, number) for number in range(count))
        return Case(kind, f"{count} header lines", path, body, frozenset({431}), lines)
    lines = tuple(b"x-h%d: %s" % (number, b"b" * 200) for number in range(MAX_HEADERS // 2))
    return Case(kind, f"{len(lines)} legal headers", path, body, frozenset({200}), lines)


def send(url: str, case: Case) -> int:
    """The status of ``case`` sent to ``url`` on a connection of its own; 0 if no status line came back."""
    with connect(url) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a flood answered 431 before it was sent
            sock.sendall(case.request())
        reply = read_all(sock)
    if not reply.startswith(b"HTTP/1.1 "):
        return 0
    return int(reply[9:12])


@dataclass
class FuzzResult:
    outcomes: Counter[tuple[str, int]] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    gone: int = 0  # sent to a deployment the rollout had already removed

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    def count(self, kind: str) -> int:
        return sum(number for (case_kind, _), number in self.outcomes.items() if case_kind == kind)


class Fuzz:
    """Hostile cases from a seeded RNG, sent one after another to the URLs ``targets()`` names (re-read each
    half second, so a rollout's new deployments are fuzzed too), in a thread: ``with Fuzz(...) as fuzz``."""

    def __init__(
        self,
        targets: Callable[[], list[str]],
        row: list[float],
        columns: list[str],
        model: str,
        seed: int = 0,
        pause: float = 0.02,
        max_seconds: float = 120.0,
    ) -> None:
        self.result = FuzzResult()
        self._targets, self._row, self._columns, self._model = targets, row, columns, model
        self._rng, self._pause, self._max_seconds = random.Random(seed), pause, max_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fuzz", daemon=True)

    def _run(self) -> None:
        until = time.monotonic() + self._max_seconds
        targets, read_at = self._targets(), time.monotonic()
        while not self._stop.is_set() and time.monotonic() < until:
            if time.monotonic() - read_at > 0.5:
                targets, read_at = self._targets(), time.monotonic()
            url = self._rng.choice(targets)
            case = hostile_case(self._rng, self._row, self._columns, self._model)
            try:
                status = send(url, case)
            except ConnectionRefusedError:
                if url in self._targets():
                    self.result.unexpected.append(f"{case.what} to {url}: connection refused")
                else:
                    self.result.gone += 1
                continue
            self.result.outcomes[(case.kind, status)] += 1
            if status not in case.allowed:
                self.result.unexpected.append(f"{case.what} to {url}: {status or 'no answer'}")
            self._stop.wait(self._pause)

    def __enter__(self) -> Fuzz:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
