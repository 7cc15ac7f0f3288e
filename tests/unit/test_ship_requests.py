"""Shipping finished collection files: uploaded whole under the host's name, removed only once uploaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.collected import load_requests
from tasks.ship_requests import ship_finished

HEADER = b'{"header": {"model": "m", "model_version": "1", "features": ["x"], "format": 2}}\n'


def call(request_id: str, time: float) -> bytes:
    return b'{"request_ids": ["%s"], "rows": [1], "time": %f, "inputs": [[1.5]], "predictions": [3.0]}\n' % (
        request_id.encode(),
        time,
    )


def write(folder: Path, name: str, *lines: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(HEADER + b"".join(lines))
    return path


def test_finished_files_are_shipped_with_the_host_name_and_the_one_being_written_stays(tmp_path: Path) -> None:
    local, store = tmp_path / "local", tmp_path / "store"
    write(local, "requests-20261206T010000-7-0001.jsonl", call("a", 100.0))
    write(local, "requests-20261206T010500-7-0002.jsonl.part", call("b", 200.0))

    shipped = ship_finished(local, f"file://{store}", host="web-1")

    assert (shipped.files, shipped.failed) == (1, {})
    assert sorted(p.name for p in local.iterdir()) == ["requests-20261206T010500-7-0002.jsonl.part"]
    assert [p.name for p in store.iterdir()] == ["requests-20261206T010000-7-0001-web-1.jsonl"]
    write(tmp_path / "other", "requests-20261206T010000-9-0001.jsonl", call("c", 150.0))
    assert ship_finished(tmp_path / "other", f"file://{store}", host="web-2").files == 1
    frame = load_requests(f"file://{store}", since=0)
    assert list(frame["request_id"]) == ["a", "c"]  # both hosts' files, read from the store


def test_a_failed_upload_keeps_the_file_for_the_next_round(tmp_path: Path) -> None:
    local = tmp_path / "local"
    kept = write(local, "requests-20261206T010000-7-0001.jsonl", call("a", 100.0))
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the store's folder should be")

    shipped = ship_finished(local, f"file://{blocked}/requests", host="web-1")

    assert shipped.files == 0 and list(shipped.failed) == [kept.name]
    assert kept.read_bytes().startswith(HEADER)  # nothing lost
    assert ship_finished(local, f"file://{tmp_path / 'store'}", host="web-1").files == 1  # the next round ships it


def test_shipping_once_from_a_folder_that_does_not_exist_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli.main import main
    from mlops.settings import get_settings

    monkeypatch.setenv("MLOPS_REQUESTS_URI", (tmp_path / "bucket").as_uri())
    get_settings.cache_clear()
    try:
        assert main(["ship-requests", "--from", str(tmp_path / "nowhere")]) == 1
    finally:
        get_settings.cache_clear()
    error = capsys.readouterr().err
    assert f"{tmp_path / 'nowhere'} does not exist: no server has collected there" in error
