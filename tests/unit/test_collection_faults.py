"""Collection under a file system that refuses writes: nothing is lost silently, and it resumes by itself.

The folder is made unwritable by putting a file where it was (root, as CI runs, ignores permission
bits); it comes back by moving the folder back.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from starlette.testclient import TestClient

from serving.app import create_app
from serving.collector import CollectorConfig, RequestCollector, collected_files, iter_collected
from serving.config import ServerConfig
from serving.model import OnnxModel
from tests.conftest import TINY_FEATURES
from tests.unit.test_serving_app import metric

ROWS = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_the_writer_survives_a_folder_that_refuses_files_counts_what_it_drops_and_resumes(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    folder, away = tmp_path / "requests", tmp_path / "moved-away"
    collector = RequestCollector(CollectorConfig(folder, file_rows=2, flush_seconds=0.01), "tiny", "7", TINY_FEATURES)
    model = OnnxModel(tiny_bundle).load()
    with TestClient(create_app(model, ServerConfig(), collector)) as client:

        def send(times: int) -> None:
            for _ in range(times):
                assert client.post("/invocations", json={"instances": ROWS}).status_code == 200

        send(3)  # 6 rows: three files, each finished at 2 rows
        wait_for(lambda: collector.written_rows == 6 and not list(folder.glob("*.part")))  # every file finished
        folder.rename(away)
        folder.write_text("not a folder")  # every open, rename and mkdir below it now fails
        send(5)  # 10 rows the writer cannot write
        wait_for(lambda: collector.dropped_rows == 10 and collector.pending == 0)
        text = client.get("/metrics").text
        assert metric(text, "mlops_serving_collection_dropped_rows_total") == 10
        assert metric(text, "mlops_serving_collection_write_errors_total") >= 1
        assert collector.last_error.startswith(("NotADirectoryError", "FileNotFoundError", "FileExistsError"))
        assert f'mlops_serving_collection_last_error{{error="{collector.last_error.split(":")[0]}' in text

        folder.unlink()
        away.rename(folder)  # writable again
        send(2)
        wait_for(lambda: collector.written_rows == 10)
    assert (collector.written_rows, collector.dropped_rows) == (10, 10)
    files = collected_files(folder)
    assert not list(folder.glob("*.part"))  # the file the error left open was finished on recovery
    assert len(list(iter_collected(folder))) == 10  # 6 before, 4 after: every written row readable
    mode = stat.S_IMODE(folder.stat().st_mode)
    assert mode == 0o700 and all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in files)


def test_a_file_cut_mid_line_by_a_failed_write_is_finished_at_its_last_whole_line(tmp_path: Path) -> None:
    collector = RequestCollector(CollectorConfig(tmp_path, flush_seconds=0.01), "m", "1", ["a"]).start()
    collector.submit("r0", np.array([[1.0]]), np.array([2.0]))
    wait_for(lambda: collector.written_rows == 1)
    collector._abandon_file()  # as a write error leaves it
    [part] = tmp_path.glob("*.part")
    with part.open("ab") as handle:
        handle.write(b'{"request_ids": ["r1"], "rows": [1], "ti')  # half a line
    collector.submit("r2", np.array([[3.0]]), np.array([4.0]))
    collector.close()
    assert [row["request_id"] for row in iter_collected(tmp_path)] == ["r0", "r2"]
