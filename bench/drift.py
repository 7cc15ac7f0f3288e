"""Drift decision on 1M collected rows: the fast path (tasks.drift) vs Evidently's DataDriftPreset.

    uv run python bench/drift.py [--rows 1000000] [--columns 20] [--skip-evidently]

Synthetic data: a 100k-row reference, and a current window in which a quarter of the columns
drift (shift of 0.5 sd, a wider spread, or another shape). Prints the time of each, the
per-column scores side by side, and whether both name the same drifted columns. The current
window is also written the way servers collect it (``serving.collector``, 10-row calls) and read
back with ``tasks.collected.load_requests``: the monitor's whole path from files to a decision.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving.collector import CollectorConfig, RequestCollector
from tasks.collected import load_requests
from tasks.drift import ReferenceProfile, decide


def data(rows: int, columns: int) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    rng = np.random.default_rng(0)
    names = [f"f{i:02d}" for i in range(columns)]
    reference = pd.DataFrame(rng.normal(size=(100_000, columns)), columns=names)
    current = pd.DataFrame(rng.normal(size=(rows, columns)), columns=names)
    drifted = names[::4]  # a quarter of the columns
    for index, name in enumerate(drifted):
        if index % 3 == 0:
            current[name] += 0.5
        elif index % 3 == 1:
            current[name] *= 1.6
        else:
            current[name] = rng.exponential(size=rows)
    return reference, current, drifted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--columns", type=int, default=20)
    parser.add_argument("--skip-evidently", action="store_true")
    args = parser.parse_args()
    reference, current, planted = data(args.rows, args.columns)
    started = time.perf_counter()
    profile = ReferenceProfile.from_frame(reference)
    profiled = time.perf_counter() - started
    started = time.perf_counter()
    fast = decide(profile, current)
    fast_seconds = time.perf_counter() - started
    print(f"{args.rows} rows x {args.columns} columns; planted drift in {planted}")
    print(f"reference profile (once, at training): {profiled:.2f} s, {len(profile.to_json()) / 1e3:.0f} kB")
    print(f"fast decision (sample {fast.sampled} rows): {fast_seconds:.2f} s -> drifted {fast.drifted}")
    with tempfile.TemporaryDirectory() as scratch:
        collector = RequestCollector(CollectorConfig(Path(scratch), queue_size=10**7), "bench", "1", list(current))
        matrix = np.ascontiguousarray(current.to_numpy())
        first = np.ascontiguousarray(matrix[:, 0])
        for start in range(0, len(matrix), 10):
            collector.submit_call([f"r{start}"], [10], matrix[start : start + 10], first[start : start + 10])
        collector.start().close(timeout=600)
        started = time.perf_counter()
        window = load_requests(Path(scratch), since=0)
        read_seconds = time.perf_counter() - started
        collected = decide(profile, window[list(current)])
        total = time.perf_counter() - started
    print(
        f"from collected files: read {len(window)} rows {read_seconds:.2f} s, read + decide {total:.2f} s "
        f"-> drifted {collected.drifted}"
    )
    if args.skip_evidently:
        return
    from evidently import Report
    from evidently.presets import DataDriftPreset

    started = time.perf_counter()
    metrics = Report([DataDriftPreset()]).run(current, reference).dict()["metrics"]
    evidently_seconds = time.perf_counter() - started
    scores = {m["config"]["column"]: float(m["value"]) for m in metrics if m["metric_name"].startswith("ValueDrift(")}
    drifted = sorted(c for c, score in scores.items() if score > 0.1)
    print(f"Evidently DataDriftPreset (full data): {evidently_seconds:.1f} s -> drifted {drifted}")
    print(f"same drifted columns: {drifted == fast.drifted}; speed-up {evidently_seconds / fast_seconds:.0f}x")
    print("| column | Evidently | fast | |diff| |\n|---|---|---|---|")
    for column, score in scores.items():
        print(f"| {column} | {score:.4f} | {fast.scores[column]:.4f} | {abs(score - fast.scores[column]):.4f} |")


if __name__ == "__main__":
    main()
