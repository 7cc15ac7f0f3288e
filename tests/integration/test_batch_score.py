"""Batch scoring with the champion's ONNX bundle: every row once, predictions equal to the trained model's,
bad rows quarantined with the reason, and a run killed midway resumed without duplicating a row."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from flows.batch_score import BatchScoreParameters, batch_score_flow
from mlflow_server import MlflowServerConfig
from mlops.process import free_port
from mlops.settings import Settings
from tasks.batch import REJECTED, BatchScoreError, read_scores
from tasks.ingest import accepted_frame
from tasks.registry import CHAMPION
from tests.integration.conftest import model_home

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scored(
    tmp_path_factory: pytest.TempPathFactory, mlflow_config: MlflowServerConfig, prefect_harness: None
) -> Iterator[tuple[Settings, pd.DataFrame]]:
    with model_home(tmp_path_factory, mlflow_config.url, "batched", (([0, 1], CHAMPION),)) as settings:
        frame = accepted_frame(settings.data_for())
        assert frame is not None
        yield settings, frame


def rows(frame: pd.DataFrame, count: int, seed: int = 0) -> pd.DataFrame:
    return frame.sample(count, replace=True, random_state=seed).reset_index(drop=True)


def test_a_folder_is_scored_once_per_row_like_the_trained_model(
    scored: tuple[Settings, pd.DataFrame], tmp_path: Path
) -> None:
    settings, frame = scored
    features = list(settings.spec().feature_names)
    inputs = tmp_path / "in"
    inputs.mkdir()
    first = rows(frame, 230, seed=1).drop(columns=[settings.spec().target.column])
    first.loc[[5, 77], "bmi"] = np.nan
    first["bmi"] = first["bmi"].astype(object)
    first.loc[100, "bmi"] = "n/a"
    first.to_csv(inputs / "a.csv", index=False)
    second = rows(frame, 120, seed=2)
    second.to_parquet(inputs / "b.parquet", index=False)

    outcome = batch_score_flow(BatchScoreParameters(input=str(inputs), output=str(tmp_path / "out"), chunk_rows=50))

    assert (outcome.files, outcome.rows, outcome.scored, outcome.rejected) == (2, 350, 347, 3)
    assert (outcome.parts_written, outcome.parts_resumed, outcome.version) == (5 + 3, 0, "1")
    result = read_scores(tmp_path / "out")
    assert len(result) == 347 and result["request_id"].is_unique and set(result["model_version"]) == {"1"}
    model = mlflow.sklearn.load_model(f"models:/{settings.model_name}/1")
    expected = model.predict(result[features].astype(float))
    assert np.abs(result["prediction"].to_numpy() - expected).max() < 1e-6
    quarantined = pd.concat([pd.read_parquet(p) for p in (tmp_path / "out" / REJECTED).iterdir()])
    assert sorted(quarantined["request_id"]) == ["a:100", "a:5", "a:77"]
    assert set(quarantined["reason"]) == {"a feature is missing or not a finite number"}

    again = batch_score_flow(BatchScoreParameters(input=str(inputs), output=str(tmp_path / "out"), chunk_rows=50))
    assert (again.parts_written, again.parts_resumed) == (0, 8)  # a finished run resumes to nothing
    with pytest.raises(BatchScoreError, match=r"chunk_rows 50 \(now 60\); choose another output folder"):
        batch_score_flow(BatchScoreParameters(input=str(inputs), output=str(tmp_path / "out"), chunk_rows=60))


def test_a_missing_feature_column_is_named(scored: tuple[Settings, pd.DataFrame], tmp_path: Path) -> None:
    _, frame = scored
    rows(frame, 10).drop(columns=["s4"]).to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(BatchScoreError, match=r"x.csv lacks feature column\(s\) s4"):
        batch_score_flow(BatchScoreParameters(input=str(tmp_path / "x.csv"), output=str(tmp_path / "out")))


def test_a_run_killed_midway_resumes_without_duplicating_rows(
    scored: tuple[Settings, pd.DataFrame], tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    _, frame = scored
    big = rows(frame, 200_000, seed=3)
    big.to_parquet(tmp_path / "big.parquet", index=False)
    output = tmp_path / "out"
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    command = [sys.executable, "-m", "flows.batch_score", str(tmp_path / "big.parquet"), str(output)]
    process = subprocess.Popen(
        [*command, "--chunk-rows", "500"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while len(list(output.glob("big/part-*.parquet"))) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(30)
    written_before = len(list(output.glob("big/part-*.parquet")))
    assert 5 <= written_before < 400, "the run was not killed midway"

    outcome = batch_score_flow(
        BatchScoreParameters(input=str(tmp_path / "big.parquet"), output=str(output), chunk_rows=500)
    )

    assert outcome.parts_resumed == written_before and outcome.parts_written == 400 - written_before
    result = read_scores(output)
    assert len(result) == 200_000 and result["request_id"].is_unique
    assert sorted(result["request_id"], key=lambda rid: int(rid.split(":")[1]))[-1] == "big:199999"
    assert not list(output.rglob(".*.tmp"))  # the killed run's half-written part was written again


def test_a_partitioned_data_set_scored_on_a_dask_cluster_matches_the_single_process_run_and_resumes(
    scored: tuple[Settings, pd.DataFrame], dask_cluster: str, tmp_path: Path
) -> None:
    settings, frame = scored
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    for index in range(4):  # as dask.dataframe.to_parquet writes one: part.<n>.parquet
        part = rows(frame, 300, seed=10 + index).drop(columns=[settings.spec().target.column])
        if index == 2:
            part.loc[[3, 200], "bmi"] = np.nan
        part.to_parquet(dataset / f"part.{index}.parquet", index=False)
    local, spread = tmp_path / "local", tmp_path / "dask"

    alone = batch_score_flow(BatchScoreParameters(input=str(dataset), output=str(local), chunk_rows=100))
    shared = batch_score_flow(
        BatchScoreParameters(input=str(dataset), output=str(spread), chunk_rows=100, dask_address=dask_cluster)
    )

    figures = ("rows", "scored", "rejected", "parts_written", "parts_resumed")
    assert [getattr(shared, name) for name in figures] == [getattr(alone, name) for name in figures]
    assert (shared.rows, shared.rejected, shared.parts_written) == (1200, 2, 12)
    assert len(shared.workers) == 2 and sum(shared.workers.values()) == 4, shared.workers  # both workers scored
    assert shared.peak_rss_mb > 0 and alone.workers == {}

    def same_output() -> None:
        for folder in ("", REJECTED):
            ours, theirs = (
                sorted(p.relative_to(root) for p in (root / folder).rglob("*.parquet")) for root in (spread, local)
            )
            assert ours == theirs
        by_id = [read_scores(root).sort_values("request_id").reset_index(drop=True) for root in (spread, local)]
        pd.testing.assert_frame_equal(*by_id)

    same_output()
    (spread / "part.1" / "part-00001.parquet").unlink()  # as a worker killed before it wrote this part
    again = batch_score_flow(
        BatchScoreParameters(input=str(dataset), output=str(spread), chunk_rows=100, dask_address=dask_cluster)
    )
    assert (again.parts_written, again.parts_resumed) == (1, 11)
    same_output()


def test_an_unreachable_dask_scheduler_is_named_with_what_to_do(
    scored: tuple[Settings, pd.DataFrame], tmp_path: Path
) -> None:
    _, frame = scored
    rows(frame, 10).to_parquet(tmp_path / "part.0.parquet", index=False)
    nowhere = f"tcp://127.0.0.1:{free_port()}"
    params = BatchScoreParameters(
        input=str(tmp_path / "part.0.parquet"), output=str(tmp_path / "out"), dask_address=nowhere
    )
    with pytest.raises(BatchScoreError, match=rf"no Dask scheduler answers at {nowhere} .*unset MLOPS_DASK_ADDRESS"):
        batch_score_flow(params)
    assert not list((tmp_path / "out").glob("*/part-*.parquet"))  # nothing half-scored
