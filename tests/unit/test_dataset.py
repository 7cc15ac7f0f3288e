import io

import pandas as pd

from tasks.dataset import dataset_digest, parse_table, store_snapshot


def test_same_content_gives_same_digest_whatever_the_format(batches: list[pd.DataFrame]) -> None:
    frame = batches[0]
    from_csv = parse_table(frame.to_csv(index=False).encode(), "a.csv")
    buffer = io.BytesIO()
    frame.astype({"age": "int64"}).to_parquet(buffer)
    from_parquet = parse_table(buffer.getvalue(), "a.parquet")
    shuffled_columns = frame[list(reversed(frame.columns))]
    digests = {dataset_digest(item) for item in (frame, from_csv, from_parquet, shuffled_columns)}
    assert len(digests) == 1


def test_any_change_of_content_changes_the_digest(batches: list[pd.DataFrame]) -> None:
    frame = batches[0]
    changed = frame.copy()
    changed.loc[0, "bmi"] += 0.1
    reordered = frame.iloc[::-1]
    assert len({dataset_digest(frame), dataset_digest(changed), dataset_digest(reordered)}) == 3


def test_snapshot_is_content_addressed_parquet(tmp_path, batches: list[pd.DataFrame]) -> None:
    snapshot = store_snapshot(batches[1], str(tmp_path), "b1")
    assert snapshot.uri.endswith(f"{snapshot.digest}.parquet")
    assert snapshot.rows == len(batches[1])
    assert dataset_digest(pd.read_parquet(snapshot.uri)) == snapshot.digest


def test_unreadable_and_unknown_files_are_reported() -> None:
    import pytest

    with pytest.raises(ValueError, match="unsupported file type"):
        parse_table(b"x", "batch.xlsx")
    with pytest.raises(ValueError, match="cannot be parsed"):
        parse_table(b"PAR1 not parquet", "batch.parquet")
