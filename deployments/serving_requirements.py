"""The serving image's pinned requirements, exported from ``uv.lock`` (dependency group ``serving-image``).

``python -m deployments.serving_requirements`` rewrites the file; ``--check`` exits 1 when it is stale.
The image installs exactly these versions, with hashes, so it runs what the tests ran.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

from tasks.image import DOCKER_DIR, REQUIREMENTS

HEADER = "# Generated from uv.lock by `make serving-requirements` (group serving-image). Do not edit.\n"
EXPORT_ARGS = (
    "export",
    "--frozen",
    "--only-group",
    "serving-image",
    "--no-emit-project",
    "--no-header",
    "--format",
    "requirements-txt",
)


def uv_binary() -> str:
    found = os.environ.get("UV") or shutil.which("uv")
    if not found:
        raise FileNotFoundError("uv not found: run this through `uv run` or put uv on PATH")
    return found


def exported() -> str:
    """The requirements as ``uv export`` gives them from the lock, with the header."""
    result = subprocess.run(
        [uv_binary(), *EXPORT_ARGS], cwd=DOCKER_DIR.parent.parent, capture_output=True, text=True, check=True
    )
    return HEADER + result.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from the lock")
    args = parser.parse_args(argv)
    text = exported()
    if args.check:
        if REQUIREMENTS.read_text() != text:
            print(f"{REQUIREMENTS} is stale: run `make serving-requirements`", file=sys.stderr)
            return 1
        return 0
    REQUIREMENTS.write_text(text)
    print(REQUIREMENTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
