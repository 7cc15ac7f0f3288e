"""Server configuration: command-line flags over ``MLOPS_SERVING_*`` environment variables over defaults.

Plain dataclasses and the standard library, so the serving image needs nothing more.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Self, get_type_hints

ENV_PREFIX = "MLOPS_SERVING_"


class ConfigError(ValueError):
    """An environment variable or flag holds a value of the wrong kind."""


class EnvConfig:
    """A frozen dataclass read from ``<ENV_PREFIX><FIELD>`` environment variables, typed by its fields."""

    ENV_PREFIX: ClassVar[str] = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """Defaults, then ``<ENV_PREFIX><FIELD>`` variables, then non-None overrides.

        Raises:
            ConfigError: A variable cannot be read as its field's type.
        """
        environ = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for item in fields(cls):  # type: ignore[arg-type]
            name = cls.ENV_PREFIX + item.name.upper()
            if name in environ:
                values[item.name] = _convert(name, environ[name], hints[item.name])
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment that makes :meth:`from_env` rebuild this config (for worker processes)."""
        return {
            self.ENV_PREFIX + item.name.upper(): ""
            if value is None
            else str(value).lower()
            if isinstance(value, bool)
            else str(value)
            for item in fields(self)  # type: ignore[arg-type]
            for value in [getattr(self, item.name)]
        }


@dataclass(frozen=True)
class ServerConfig(EnvConfig):
    """How the server listens, what it accepts, and where it collects requests.

    Attributes:
        host: Interface to bind (loopback by default).
        port: Port to bind.
        max_body_bytes: Largest request body accepted (413 beyond).
        max_rows: Most rows scored in one request (413 beyond).
        token: Bearer token required on every endpoint but health; None disables auth.
        collect_dir: Folder of collected requests; None disables collection.
        collect_queue: Requests that may wait for the collection writer before rows are dropped.
        collect_file_rows: Rows per collection file before it rolls.
        collect_file_seconds: Age of a collection file before it rolls.
        inline_rows: Requests up to this many rows are scored on the event loop; larger ones in a thread.
        threads: onnxruntime intra-op threads per worker.
        workers: Worker processes sharing the port (one core each is the sweet spot).
        metrics_dir: Where workers share their counters so any of them can answer ``/metrics``
            for all; a temporary folder is used when ``workers`` > 1 and this is unset.
        graceful_timeout: Seconds in-flight requests get to finish on SIGTERM.
        log_level: uvicorn log level.
        access_log: Whether uvicorn logs every request (costs throughput).
        fault_error_share: Chaos testing: share of inference requests answered 500 on purpose, evenly spread (0 = off).
        fault_delay_ms: Chaos testing: delay added to every inference request (0 = off).
    """

    ENV_PREFIX: ClassVar[str] = ENV_PREFIX

    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 4 * 1024 * 1024
    max_rows: int = 10_000
    token: str | None = None
    collect_dir: Path | None = None
    collect_queue: int = 10_000
    collect_file_rows: int = 100_000
    collect_file_seconds: float = 300.0
    inline_rows: int = 256
    threads: int = 1
    workers: int = 1
    metrics_dir: Path | None = None
    graceful_timeout: int = 30
    log_level: str = "info"
    access_log: bool = False
    fault_error_share: float = 0.0
    fault_delay_ms: float = 0.0

    def __post_init__(self) -> None:
        positive = ("max_body_bytes", "max_rows", "workers", "threads", "collect_file_rows", "collect_file_seconds")
        problems = [f"{name} must be > 0 (got {getattr(self, name)})" for name in positive if getattr(self, name) <= 0]
        not_negative = ("collect_queue", "inline_rows", "graceful_timeout")
        problems += [
            f"{name} must be >= 0 (got {getattr(self, name)})" for name in not_negative if getattr(self, name) < 0
        ]
        if not 0.0 <= self.fault_error_share <= 1.0:
            problems.append(f"fault_error_share must be within [0, 1] (got {self.fault_error_share})")
        if self.fault_delay_ms < 0:
            problems.append(f"fault_delay_ms must be >= 0 (got {self.fault_delay_ms})")
        if not 0 <= self.port <= 65535:
            problems.append(f"port must be 0-65535 (got {self.port})")
        if problems:
            raise ConfigError("; ".join(problems))


def _convert(name: str, raw: str, kind: Any) -> Any:
    text = raw.strip()
    kinds = set(getattr(kind, "__args__", (kind,)))
    if type(None) in kinds and text == "":
        return None
    try:
        if bool in kinds:
            if text.lower() not in {"1", "0", "true", "false", "yes", "no"}:
                raise ValueError("expected true or false")
            return text.lower() in {"1", "true", "yes"}
        if int in kinds:
            return int(text)
        if float in kinds:
            return float(text)
        if Path in kinds:
            return Path(text)
        return text
    except ValueError as error:
        raise ConfigError(f"{name}={raw!r}: {error}") from error
