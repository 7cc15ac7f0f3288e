"""Ingestion: nothing is lost, rejected files are quarantined byte for byte."""

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from tasks.dataset import ledger_entries
from tasks.ingest import (
    NoDataError,
    accept_batch,
    assemble_training_set,
    list_new_batches,
    quarantine_batch,
    read_batch,
)
from tasks.sample_data import land_batches


def test_lists_only_batch_files_in_name_order(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    land_batches(str(landing), [2, 0])
    (landing / "notes.txt").write_text("not data")
    (landing / ".partial.csv").write_text("a,b")
    names = [batch.name for batch in list_new_batches.fn(str(landing))]
    assert names == ["diabetes_batch_000.csv", "diabetes_batch_002.csv"]


def test_missing_landing_folder_means_no_batches(tmp_path: Path) -> None:
    assert list_new_batches.fn(str(tmp_path / "nope")) == []


def test_quarantine_is_byte_identical_with_validation_beside(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    original = b"age,sex\n1,2\n\xff\xfe odd bytes kept as they are\n"
    (landing / "bad.csv").write_bytes(original)
    [batch] = list_new_batches.fn(str(landing))
    moved = quarantine_batch.fn(batch, str(tmp_path / "data"), "ds", {"success": False, "reason": "bmi: nulls"})
    assert Path(moved).read_bytes() == original
    assert not (landing / "bad.csv").exists()
    report = json.loads(Path(moved + ".validation.json").read_text())
    assert report["reason"] == "bmi: nulls" and report["sha256"] == hashlib.sha256(original).hexdigest()


def test_unparseable_batch_is_a_result_not_an_exception(tmp_path: Path) -> None:
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    [batch] = list_new_batches.fn(str(tmp_path))
    result = read_batch.fn(batch)
    assert result.frame is None and "cannot be parsed" in (result.error or "")


def test_accepted_batches_build_the_training_set_in_arrival_order(tmp_path: Path, batches: list[pd.DataFrame]) -> None:
    landing, data = tmp_path / "landing", str(tmp_path / "data")
    with pytest.raises(NoDataError, match="no accepted data"):
        assemble_training_set.fn(data)
    land_batches(str(landing), [0, 1])
    for batch in list_new_batches.fn(str(landing)):
        accept_batch.fn(batch, read_batch.fn(batch).frame, data, "ds", {"success": True})
    assert list(landing.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "data" / "processed").iterdir()) == [
        "diabetes_batch_000.csv",
        "diabetes_batch_001.csv",
    ]
    frame, snapshot = assemble_training_set.fn(data)
    pd.testing.assert_frame_equal(frame, pd.concat(batches[:2], ignore_index=True))
    assert snapshot.rows == len(frame) and Path(snapshot.uri).exists()


def test_relanding_the_same_file_does_not_duplicate_rows(tmp_path: Path) -> None:
    landing, data = tmp_path / "landing", str(tmp_path / "data")
    said = None
    for _ in range(2):
        land_batches(str(landing), [0])
        [batch] = list_new_batches.fn(str(landing))
        said = accept_batch.fn(batch, read_batch.fn(batch).frame, data, "ds", {"success": True})
    assert len(ledger_entries(data)) == 1
    assert (tmp_path / "data" / "processed" / "duplicates" / "diabetes_batch_000.csv").exists()
    assert "holds the same file as diabetes_batch_000.csv" in (said or "")


def test_the_same_rows_re_encoded_are_not_ingested_again(tmp_path: Path, batches: list[pd.DataFrame]) -> None:
    """A byte-order mark, CRLF, blank lines, quoted numbers, Parquet: each a different file, one content."""
    landing, data = tmp_path / "landing", str(tmp_path / "data")
    landing.mkdir()
    rows = batches[0]
    text = rows.to_csv(index=False)
    quoted = rows.to_csv(index=False, quoting=1)  # every value in quotes
    encodings = {
        "a.csv": text.encode(),
        "b.csv": b"\xef\xbb\xbf" + text.encode(),
        "c.csv": text.replace("\n", "\r\n").encode(),
        "d.csv": (text + "\n\n").encode(),
        "e.csv": quoted.encode(),
    }
    for name, payload in encodings.items():
        (landing / name).write_bytes(payload)
    rows.to_parquet(landing / "f.parquet", index=False)
    said = []
    for batch in list_new_batches.fn(str(landing)):
        frame = read_batch.fn(batch).frame
        assert frame is not None, batch.name
        said.append(accept_batch.fn(batch, frame, data, "ds", {"success": True}))
    assert said[0] is None and len(ledger_entries(data)) == 1
    assert all(message and "holds the same rows as a.csv" in message for message in said[1:]), said
    assert sorted(p.name for p in (tmp_path / "data" / "processed" / "duplicates").iterdir()) == [
        "b.csv",
        "c.csv",
        "d.csv",
        "e.csv",
        "f.parquet",
    ]
    frame, _ = assemble_training_set.fn(data)
    assert len(frame) == len(rows)


def test_landing_rejects_unknown_batch_indices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"out of range: there are 4 batches"):
        land_batches(str(tmp_path), [7])
