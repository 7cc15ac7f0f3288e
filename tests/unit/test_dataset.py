import io
import re

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


def test_malformed_csv_gets_a_reason_naming_the_real_problem(batches: list[pd.DataFrame]) -> None:
    import pytest

    from tasks.dataset import MalformedTableError

    lines = batches[0].head(4).to_csv(index=False).splitlines()
    header, first, rest = lines[0], lines[1], lines[2:]
    big = first.split(",")
    big[2] = "1e309"
    cases = {
        "a trailing comma?": [header, first + ",", *rest],
        "an unquoted comma in a value?": [header, first + ",7", *rest],
        "have no name (a trailing comma in the header?)": [header + ",", *(line + ",1" for line in lines[1:])],
        "1e309 does not fit a 64-bit float": [header, ",".join(big), *rest],
    }
    for reason, text in cases.items():
        with pytest.raises(MalformedTableError, match=re.escape(reason)):
            parse_table(("\n".join(text) + "\n").encode(), "b.csv")
    with pytest.raises(MalformedTableError, match=r"line 2 has 12 fields but the header names 11 columns"):
        parse_table(("\n".join(cases["a trailing comma?"]) + "\n").encode(), "b.csv")
    # what must keep working: quoted commas, short rows (gaps), the word inf in a text column
    quoted = parse_table(b'name,x\n"a, b",1\nc,\n', "q.csv")
    assert quoted["name"].tolist() == ["a, b", "c"] and quoted["x"].isna().tolist() == [False, True]
    assert parse_table(b"tag,x\ninf,1\nnone,2\n", "t.csv")["tag"].tolist() == ["inf", "none"]
    assert list(parse_table(("\n".join(lines) + "\n").encode(), "ok.csv").columns) == header.split(",")
