"""Batch scoring on a Dask cluster against the single-process path: rows/s and memory per worker, in one run.

    uv run python bench/batch_dask.py [--rows 10000000] [--partitions 20] [--chunk-rows 50000]

The champion of ``two_versions`` (trained by the real flow on a scratch MLflow server) scores a
partitioned Parquet data set of ``--rows`` rows (the diabetes features resampled with 1 % jitter, in
``--partitions`` files named as ``dask.dataframe.to_parquet`` names them) by the batch flow, each
setting into a fresh output folder:

- single process: the flow as it runs by default (each chunk's rows in slices on one thread per core);
- Dask, 1 and 2 workers: ``dask scheduler`` and ``dask worker --nworkers N --nthreads 1`` processes on
  loopback (``--preload tasks.batch_dask``: imports done as a worker starts), one ``score-partition`` task
  per file; scored twice: the first run on new workers (their first task fetches the bundle and starts
  Prefect's task engine), then again on the same, warm workers.

Prints rows/s (the flow's own clock: fetching the bundle to the last part written), the ratio to the
single process, and peak memory: of the flow's process for the single-process path (sampled every
0.1 s), of each worker process (``ru_maxrss`` when its last task ended) for Dask.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
from prefect.settings import PREFECT_API_URL

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from two_versions import two_versions

from flows.batch_score import BatchOutcome, BatchScoreParameters, batch_score_flow
from mlops.dask_cluster import dask_processes
from tasks.ingest import accepted_frame


class PeakRss:
    """This process's peak resident memory while the block runs, sampled every 0.1 s."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.1):
            self.peak_mb = max(self.peak_mb, me.memory_info().rss / 2**20)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def write_dataset(folder: Path, features: list[str], base: np.ndarray, rows: int, partitions: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for index, count in enumerate(np.diff(np.linspace(0, rows, partitions + 1).astype(int))):
        sample = base[rng.integers(0, len(base), count)]
        jittered = sample * (1 + 0.01 * rng.standard_normal(sample.shape))
        pd.DataFrame(jittered, columns=features).to_parquet(folder / f"part.{index}.parquet", index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--partitions", type=int, default=20)
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    args = parser.parse_args()
    with two_versions(f"bench_{uuid.uuid4().hex[:6]}") as settings, tempfile.TemporaryDirectory() as scratch:
        features = list(settings.spec().feature_names)
        frame = accepted_frame(settings.data_for())
        assert frame is not None
        dataset = Path(scratch) / "dataset"
        started = time.perf_counter()
        write_dataset(dataset, features, frame[features].to_numpy(float), args.rows, args.partitions)
        print(f"{args.rows:,} rows in {args.partitions} Parquet files written in {time.perf_counter() - started:.0f} s")

        def run(name: str, address: str | None) -> BatchOutcome:
            params = BatchScoreParameters(
                input=str(dataset), output=str(Path(scratch) / name), chunk_rows=args.chunk_rows, dask_address=address
            )
            return batch_score_flow(params)

        table: list[tuple[str, BatchOutcome, str]] = []
        with PeakRss() as peak:
            alone = run("single", None)
        table.append(("single process (2 threads)", alone, f"{peak.peak_mb:.0f} (the flow's process)"))
        for workers in (1, 2):
            api = {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
            with dask_processes(workers, api, preload=("tasks.batch_dask",)) as address:
                for state in ("first run", "warm"):
                    outcome = run(f"dask{workers}-{state.split()[0]}", address)
                    assert outcome.rows == alone.rows and outcome.scored == alone.scored
                    memory = f"{outcome.peak_rss_mb:.0f} (the largest worker)"
                    table.append((f"Dask, {workers} worker(s) x 1 thread, {state}", outcome, memory))

    print(f"\n{args.rows:,} rows, {args.partitions} partitions, chunks of {args.chunk_rows:,} rows\n")
    print("| setting | seconds | rows/s | vs single process | peak RSS, MB |")
    print("|---|---|---|---|---|")
    for name, outcome, memory in table:
        ratio = outcome.rows_per_second / alone.rows_per_second
        print(f"| {name} | {outcome.seconds:.1f} | {outcome.rows_per_second:,.0f} | {ratio:.2f}x | {memory} |")


if __name__ == "__main__":
    main()
