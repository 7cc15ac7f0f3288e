"""``python -m serving.healthcheck``: exit 0 when the local server reports ready, 1 otherwise.

The image's HEALTHCHECK runs it (slim bases have no curl). It reads the same
``MLOPS_SERVING_HOST`` / ``MLOPS_SERVING_PORT`` as the server and asks ``/v2/health/ready``.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from serving.config import ConfigError, ServerConfig

READY_PATH = "/v2/health/ready"
WILDCARDS = {"0.0.0.0", "::", ""}


def ready_url(config: ServerConfig) -> str:
    host = "127.0.0.1" if config.host in WILDCARDS else config.host
    return f"http://{'[' + host + ']' if ':' in host else host}:{config.port}{READY_PATH}"


def main(timeout: float = 2.0) -> int:
    try:
        url = ready_url(ServerConfig.from_env())
    except ConfigError as error:
        print(f"unhealthy: {error}", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as error:
        print(f"unhealthy: {url}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
