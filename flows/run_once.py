"""What every ``python -m flows.<module>`` does with its one run: print the outcome, or the failure in one line."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any


def print_outcome(run: Callable[[], Any], what: str) -> int:
    """Call ``run`` (a flow call); print its dataclass outcome as JSON (0), or why it failed (1)."""
    try:
        outcome = run()
    except Exception as error:  # the flow run already logged the traceback
        print(f"{what} failed: {error}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(outcome), indent=2, default=str))
    return 0
