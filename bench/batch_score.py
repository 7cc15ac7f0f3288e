"""Batch scoring speed: scikit-learn ``predict`` vs onnxruntime by chunk size and threads, per model family.

    uv run python bench/batch_score.py [--rows 200000] [--repeat 3]

Each family's default pipeline is fitted on 20 000 synthetic rows (10 features, like the
diabetes data), exported with the project's converter, and scores ``--rows`` rows: scikit-learn
in one call (its default, one thread), onnxruntime in chunks of each size with 1 and 2
intra-op threads. Prints rows/s (best of ``--repeat``) and the ratio to scikit-learn; the
batch flow's defaults (``flows/batch_score.py``) come from this table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from serving.model import open_session
from tasks.features import family_estimator
from tasks.onnx_convert import MATRIX_INPUT, numeric_columns, to_onnx

FEATURES = [f"f{i}" for i in range(10)]
PARAMS = {  # the middle of each family's default grid
    "ridge": {"model__alpha": 1.0},
    "random_forest": {"model__n_estimators": 100, "model__max_depth": 8, "model__min_samples_leaf": 5},
    "gradient_boosting": {"model__n_estimators": 200, "model__learning_rate": 0.1, "model__max_depth": 3},
    "hist_gradient_boosting": {"model__learning_rate": 0.1, "model__max_leaf_nodes": 31},
}


def pipeline(family: str) -> Pipeline:
    """The family as training builds it for numbers without gaps (trees unscaled)."""
    estimator = family_estimator(family, classification=False, seed=0)
    steps = [("scale", StandardScaler())] if family == "ridge" else []
    return Pipeline([*steps, ("model", estimator)])


def best_seconds(call: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunks", type=int, nargs="+", default=[1_000, 10_000, 50_000, 200_000])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    train = pd.DataFrame(rng.normal(size=(20_000, 10)), columns=FEATURES)
    target = train["f0"] * 3 + np.sin(train["f1"] * 2) * 5 + train["f2"] * train["f3"] + rng.normal(size=20_000)
    data = pd.DataFrame(rng.normal(size=(args.rows, 10)), columns=FEATURES)
    matrix = data.to_numpy(dtype=np.float64)
    print(f"{args.rows} rows x 10 features, best of {args.repeat}; rows/s (ratio to scikit-learn)\n")
    print(
        "| family | scikit-learn | " + " | ".join(f"ort {c // 1000}k t{t}" for c in args.chunks for t in (1, 2)) + " |"
    )
    print("|---" * (2 + 2 * len(args.chunks)) + "|")
    for family, params in PARAMS.items():
        model = pipeline(family).set_params(**params).fit(train, target)
        onnx_bytes = to_onnx(model, numeric_columns(FEATURES)).model.SerializeToString()
        sklearn = best_seconds(lambda model=model: model.predict(data), args.repeat)
        cells = [f"{args.rows / sklearn:,.0f}"]
        for chunk in args.chunks:
            for threads in (1, 2):
                session = open_session(onnx_bytes, threads)

                def score(session: object = session, chunk: int = chunk) -> None:
                    for start in range(0, len(matrix), chunk):
                        session.run(None, {MATRIX_INPUT: matrix[start : start + chunk]})  # type: ignore[attr-defined]

                seconds = best_seconds(score, args.repeat)
                cells.append(f"{args.rows / seconds:,.0f} ({sklearn / seconds:.2f}x)")
        print(f"| {family} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
