"""Collected requests and delayed labels as frames: windows, open files, multi-row requests, bad labels."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serving.collector import CollectorConfig, RequestCollector
from tasks.collected import LabelsError, join_labels, load_labels, load_requests, rmse
from tasks.reference import PREDICTION, Outputs, build_reference

FEATURES = ["a", "b"]


def collect(directory: Path, calls: list[tuple[list[str], list[int]]], close: bool = True) -> RequestCollector:
    collector = RequestCollector(CollectorConfig(directory, flush_seconds=0.01), "m", "3", FEATURES).start()
    value = 0.0
    for ids, rows in calls:
        total = sum(rows)
        matrix = np.arange(value, value + 2 * total).reshape(total, 2)
        collector.submit_call(ids, rows, matrix, matrix[:, 0] * 10)
        value += 2 * total
    if close:
        collector.close()
    else:
        deadline = time.monotonic() + 5
        while collector.written_rows < sum(sum(rows) for _, rows in calls) and time.monotonic() < deadline:
            time.sleep(0.01)
    return collector


def test_rows_of_micro_batched_calls_keep_their_request_ids_and_row_numbers(tmp_path: Path) -> None:
    collect(tmp_path, [(["r1"], [1]), (["r2", "r3"], [2, 1])])
    frame = load_requests(tmp_path, since=0)
    assert frame["request_id"].tolist() == ["r1", "r2", "r2", "r3"]
    assert frame["row"].tolist() == [0, 0, 1, 0]
    assert frame["a"].tolist() == [0.0, 2.0, 4.0, 6.0] and frame[PREDICTION].tolist() == [0.0, 20.0, 40.0, 60.0]
    assert set(frame["model_version"]) == {"3"}


def test_the_file_being_written_is_read_too_and_the_window_bounds_apply(tmp_path: Path) -> None:
    collector = collect(tmp_path, [(["r1"], [1])], close=False)
    try:
        assert [p.name.endswith(".part") for p in tmp_path.iterdir()] == [True]
        assert load_requests(tmp_path, since=0)["request_id"].tolist() == ["r1"]
        assert load_requests(tmp_path, since=time.time() + 60).empty
        assert load_requests(tmp_path, since=0, until=1).empty
    finally:
        collector.close()


def test_a_half_written_last_line_is_left_for_later(tmp_path: Path) -> None:
    collect(tmp_path, [(["r1"], [1])])
    (path,) = tmp_path.iterdir()
    with path.open("ab") as handle:
        handle.write(b'{"request_ids": ["r2"], "rows": [1], "ti')
    assert load_requests(tmp_path, since=0)["request_id"].tolist() == ["r1"]


def test_damaged_lines_and_unusable_answers_are_left_out_and_counted(tmp_path: Path) -> None:
    """What an older server collected (a null prediction for an input that overflowed the model) or a damaged
    line: the window is still read, without them, and the monitor is told how many."""
    collect(tmp_path, [(["r1"], [1]), (["r2"], [1])])
    (path,) = tmp_path.iterdir()
    with path.open("ab") as handle:
        handle.write(b'{"request_ids": ["r3", "r4"], "rows": [1, 1], "time": %f, ' % time.time())
        handle.write(b'"inputs": [[1.0, 2.0], [3.0, 4.0]], "predictions": [null, 5.0]}\n')
        handle.write(b'{"request_ids": ["r5"], "rows": [1], "time": "soon", "inputs": [], "predictions": [1]}\n')
        handle.write(b"not json at all\n")
        handle.write(b'{"request_ids": ["r6"], "rows": [2], "time": 1e12, "inputs": [[1, 2]], "predictions": [1]}\n')
    frame = load_requests(tmp_path, since=0)
    assert frame["request_id"].tolist() == ["r1", "r2", "r4"]
    assert frame.attrs["skipped"] == {"lines": 3, "rows": 1}


def test_files_of_other_features_are_refused(tmp_path: Path) -> None:
    collect(tmp_path, [(["r1"], [1])])
    with pytest.raises(ValueError, match=r"holds features \['a', 'b'\], expected \['x'\]"):
        load_requests(tmp_path, since=0, features=["x"])


def test_labels_join_by_request_id_and_row_and_later_files_win(tmp_path: Path) -> None:
    collect(tmp_path / "requests", [(["r1"], [1]), (["r2"], [2])])
    labels = tmp_path / "labels"
    labels.mkdir()
    pd.DataFrame({"request_id": ["r1", "r2"], "target": [1.0, 25.0]}).to_csv(labels / "1.csv", index=False)
    pd.DataFrame({"request_id": ["r2"], "row": [1], "target": [40.0]}).to_parquet(labels / "2.parquet")
    pd.DataFrame({"request_id": ["r1"], "row": [0], "target": [0.0]}).to_csv(labels / "3.csv", index=False)
    joined = join_labels(load_requests(tmp_path / "requests", since=0), load_labels(labels, "target"))
    assert sorted(zip(joined["request_id"], joined["row"], joined["label"], strict=True)) == [
        ("r1", 0, 0.0),
        ("r2", 0, 25.0),
        ("r2", 1, 40.0),
    ]
    assert rmse(joined) == pytest.approx(np.sqrt((0 + 5**2 + 0) / 3))  # predictions 0, 20, 40


def test_a_labels_file_without_the_target_says_what_it_has(tmp_path: Path) -> None:
    pd.DataFrame({"request_id": ["r1"], "y": [1.0]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(LabelsError, match=r"bad.csv lacks column\(s\) target \(has \['request_id', 'y'\]\)"):
        load_labels(tmp_path, "target")


def test_the_reference_profiles_features_and_predictions_and_samples_rows() -> None:
    frame = pd.DataFrame({"a": np.arange(10_000.0), "b": np.ones(10_000), "target": np.zeros(10_000)})
    profile, sample = build_reference(frame, FEATURES, Outputs(frame["a"].to_numpy() * 2))
    assert profile.columns == ("a", "b", PREDICTION) and profile.rows == 10_000
    assert profile.quantiles[PREDICTION][-1] == pytest.approx(2 * profile.quantiles["a"][-1])
    assert len(sample) == 5000 and list(sample.columns) == ["a", "b", "target", PREDICTION]
    assert (sample[PREDICTION] == sample["a"] * 2).all()
