"""One training run per model: the second is told who holds the batches; a dead holder frees the lock."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.training_lock import LOCK_NAME, TrainingBusyError, training_lock

HOLD = """
import sys, time
from tasks.training_lock import training_lock
with training_lock(sys.argv[1], "diabetes", "flow run brave-otter"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_run_is_refused_naming_the_holder_and_a_killed_holder_frees_it(tmp_path: Path) -> None:
    data = tmp_path / "data" / "diabetes"
    root = Path(__file__).resolve().parents[2]
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(data)], cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(
                TrainingBusyError,
                match=r"another training run of diabetes holds its batches \(flow run "
                r"brave-otter, pid \d+ on .+ since .+\); nothing was ingested",
            ),
            training_lock(str(data), "diabetes", "flow run second"),
        ):
            pytest.fail("two runs held the lock at once")
        with training_lock(str(tmp_path / "data" / "tumours"), "tumours", "another model"):
            pass  # other models are not held up
    finally:
        holder.kill()
        holder.wait()
    started = time.monotonic()
    with training_lock(f"file://{data}", "diabetes", "flow run after the crash"):
        assert "after the crash" in (data / LOCK_NAME).read_text()
    assert time.monotonic() - started < 1
    with training_lock(str(data), "diabetes", "and again"):  # released at the end of the block
        pass
