"""Lineage facts a run and a model version carry: code commit and the idempotency key."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from functools import lru_cache
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The checked-out commit, suffixed ``-dirty`` when tracked files changed; outside git the one an image
    was built from (``MLOPS_GIT_COMMIT``, set by the flows image), else ``unknown``."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("MLOPS_GIT_COMMIT") or "unknown"
    return f"{commit}-dirty" if dirty else commit


def training_key(dataset_digest: str, commit: str, parameters: dict[str, object]) -> str:
    """What makes two trainings the same: data, code and parameters."""
    payload = json.dumps({"data": dataset_digest, "code": commit, "params": parameters}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def lock_file() -> Path | None:
    """The project's locked environment, if this is a checkout."""
    path = PROJECT_ROOT / "uv.lock"
    return path if path.exists() else None
