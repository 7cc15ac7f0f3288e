"""Batch scoring speed: scikit-learn vs onnxruntime by chunk size and threading, per model family and task.

    uv run python bench/batch_score.py [--task {regression,classifier,both}] [--rows 200000] [--repeat 5]
        [--chunks 1000 10000 50000 200000] [--train-rows 20000]

Every family is fitted with the middle of its default grid (``tasks.features.DEFAULT_GRIDS``) on
``--train-rows`` rows and exported with the project's converter, then scores ``--rows`` rows:
scikit-learn in one call (its defaults), onnxruntime in chunks of each size on one thread (t1), on
two intra-op threads (t2) and as the batch flow runs it, each chunk's rows in two halves at once
(r2). Prints rows/s (best of ``--repeat`` rounds in which scikit-learn and every setting take
turns) and the ratio to scikit-learn; the batch flow's defaults (``flows/batch_score.py``) come
from these tables.

- regression: each family's pipeline on a synthetic numeric matrix (10 features, like the
  diabetes data), scikit-learn ``predict`` vs ``session.run`` on matrix slices.
- classifier (mixed types): each classification family of ``models/tumours.yaml``, built by
  ``build_estimator`` and fitted on the spec's example table (``tumours_frame``) drawn with
  replacement, measurements jittered by 1 % (gaps, integer counts, the flag and the strings kept).
  It is bundled as training bundles it (``to_onnx``, ``input_schema``, ``ModelMetadata``) and the
  rows to score are written to a Parquet file as an input would land. scikit-learn: the whole file
  as read, ``typed_features`` + ``predict_proba`` + labels from them (what a user runs on a raw
  file). Ours: the file's chunks as ``tasks.batch.chunks`` reads them, each through
  ``score_chunk`` as the flow calls it (typing, quarantine checks, the session, ``output_columns``);
  reading and writing the parts are not timed on either side. Below the table, once per family:
  labels and probabilities of the batch path against scikit-learn's on the file's first rows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from mlops.spec import CLASSIFICATION_FAMILIES, REGRESSION_FAMILIES, Kind, ModelSpec, load_spec
from serving.bundle import ModelMetadata, read_bundle, write_bundle
from serving.model import open_session
from serving.typed import TypedSchema
from tasks.batch import RowParallelSession, batch_schema, chunks, score_chunk
from tasks.export import ExportConfig, bundle_metadata
from tasks.features import DEFAULT_GRIDS, build_estimator, default_grid, family_estimator, target_values, typed_features
from tasks.onnx_convert import MATRIX_INPUT, numeric_columns, to_onnx
from tasks.sample_data import example_frame
from tasks.train import TrainingSet

ROOT = Path(__file__).resolve().parents[1]
FEATURES = [f"f{i}" for i in range(10)]
# How onnxruntime runs each chunk: t1 one thread; t2 one run on two intra-op threads; r2 the batch flow's way,
# the chunk's rows in two halves run at once on one single-threaded session (tasks.batch.RowParallelSession).
SETTINGS = ("t1", "t2", "r2")
CLASSIFIER = "tumours"  # the example classifier on a mixed-type table
PARITY_ROWS = 2_000
Timings = dict[tuple[int, str], float]  # (chunk rows, setting) -> seconds


def middle(grid: dict[str, list[Any]]) -> dict[str, Any]:
    """The middle of a grid: what a search typically lands on."""
    return {name: values[len(values) // 2] for name, values in grid.items()}


def pipeline(family: str) -> Pipeline:
    """The family as training builds it for numbers without gaps (trees unscaled)."""
    estimator = family_estimator(family, classification=False, seed=0)
    steps = [("scale", StandardScaler())] if family == "ridge" else []
    return Pipeline([*steps, ("model", estimator)])


def best_seconds(calls: dict[Any, Callable[[], object]], repeat: int) -> dict[Any, float]:
    """Each call's best time of ``repeat``, the calls taking turns in every round, so a slow spell of the machine
    hits scikit-learn and ours alike instead of one column of the table."""
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeat):
        for key, call in calls.items():
            started = time.perf_counter()
            call()
            best[key] = min(best[key], time.perf_counter() - started)
    return best


def runners(model: str | bytes) -> dict[str, Any]:
    """Each setting's session (see ``SETTINGS``)."""
    return {
        "t1": open_session(model, 1),
        "t2": open_session(model, 2),
        "r2": RowParallelSession(open_session(model, 1), 2),
    }


def chunk_label(rows: int) -> str:
    return f"{rows // 1000}k" if rows % 1000 == 0 else str(rows)


def header(chunk_sizes: list[int], extra: tuple[str, ...] = ()) -> str:
    names = [
        "family",
        "scikit-learn",
        *(f"ort {chunk_label(c)} {setting}" for c in chunk_sizes for setting in SETTINGS),
        *extra,
    ]
    return "| " + " | ".join(names) + " |\n" + "|---" * len(names) + "|"


def cells(rows: int, sklearn: float, timings: Timings) -> list[str]:
    """rows/s of scikit-learn, then of each chunk size and thread count with its ratio to scikit-learn."""
    ours = [f"{rows / seconds:,.0f} ({sklearn / seconds:.2f}x)" for seconds in timings.values()]
    return [f"{rows / sklearn:,.0f}", *ours]


def score_matrix(session: Any, matrix: np.ndarray, chunk: int) -> None:
    for start in range(0, len(matrix), chunk):
        session.run(None, {MATRIX_INPUT: matrix[start : start + chunk]})


def regression_table(rows: int, repeat: int, chunk_sizes: list[int], train_rows: int) -> None:
    rng = np.random.default_rng(0)
    train = pd.DataFrame(rng.normal(size=(train_rows, 10)), columns=FEATURES)
    target = train["f0"] * 3 + np.sin(train["f1"] * 2) * 5 + train["f2"] * train["f3"] + rng.normal(size=train_rows)
    data = pd.DataFrame(rng.normal(size=(rows, 10)), columns=FEATURES)
    matrix = data.to_numpy(dtype=np.float64)
    print(f"{rows} rows x 10 features, best of {repeat}; rows/s (ratio to scikit-learn)\n")
    print(header(chunk_sizes))
    for family in REGRESSION_FAMILIES:
        model = pipeline(family).set_params(**middle(DEFAULT_GRIDS[family])).fit(train, target)
        onnx_bytes = to_onnx(model, numeric_columns(FEATURES)).model.SerializeToString()
        sessions = runners(onnx_bytes)

        calls: dict[Any, Callable[[], object]] = {"sklearn": partial(model.predict, data)}
        calls.update(
            {
                (chunk, setting): partial(score_matrix, sessions[setting], matrix, chunk)
                for chunk in chunk_sizes
                for setting in SETTINGS
            }
        )
        timings = best_seconds(calls, repeat)
        sklearn = timings.pop("sklearn")
        print(f"| {family} | " + " | ".join(cells(rows, sklearn, timings)) + " |")


def mixed_table(spec: ModelSpec, rows: int, seed: int) -> pd.DataFrame:
    """``rows`` rows of the spec's example table drawn with replacement, its numeric measurements jittered by 1 %
    so rows are not all duplicates (gaps, integer counts, flags and strings as they are)."""
    rng = np.random.default_rng(seed)
    example = example_frame(spec)
    frame = example.iloc[rng.integers(0, len(example), rows)].reset_index(drop=True)
    for feature in spec.features:
        if feature.kind is Kind.NUMERIC:
            frame[feature.name] = frame[feature.name] * (1 + rng.normal(0, 0.01, rows))
    return frame


def export_bundle(model: Any, data: TrainingSet, family: str, directory: Path) -> tuple[Path, ModelMetadata]:
    """The fitted classifier as a bundle like ``tasks.export.export_onnx`` writes (without MLflow), read back as the
    batch flow reads it."""
    converted = to_onnx(model, data.input_columns)
    onnx_bytes = converted.model.SerializeToString()
    metadata = bundle_metadata(data, converted, onnx_bytes, family, tuple(model.classes_.tolist()), version="bench")
    return read_bundle(write_bundle(directory / family, onnx_bytes, metadata))


def sklearn_scores(model: Any, raw: pd.DataFrame, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """Labels and class probabilities of a raw frame, as a scikit-learn user gets both (one ``predict_proba``)."""
    probabilities = model.predict_proba(typed_features(raw, spec))
    return model.classes_.take(probabilities.argmax(axis=1)), probabilities


def batch_scores(
    session: Any, metadata: ModelMetadata, schema: TypedSchema | None, frames: list[pd.DataFrame], source: str
) -> list[tuple[pd.Series, dict[str, np.ndarray]]]:
    """Each chunk through the batch flow's scoring: which rows were scored, and their output columns."""
    scored = []
    for frame in frames:
        scorable, columns, _ = score_chunk(session, metadata, schema, frame, source)
        assert isinstance(columns, dict), "a classifier's chunk yields output columns"
        scored.append((scorable, columns))
    return scored


def parity(model: Any, spec: ModelSpec, model_file: Path, metadata: ModelMetadata, path: Path) -> str:
    """The batch path against scikit-learn on the file's first rows: equal labels, probabilities within the export's
    tolerance, and no row quarantined."""
    frame = next(chunks(path, PARITY_ROWS))
    schema = batch_schema(metadata)
    [(scorable, columns)] = batch_scores(open_session(str(model_file)), metadata, schema, [frame], path.name)
    x = typed_features(frame[scorable.to_numpy()], spec)
    ours = np.column_stack([columns[f"probability_{label}"] for label in metadata.classes])
    labels_equal = bool(np.array_equal(columns["prediction"], model.predict(x)))
    error = float(np.max(np.abs(ours - model.predict_proba(x))))
    tolerance = ExportConfig().probability_tolerance
    verdict = "ok" if labels_equal and error <= tolerance and scorable.all() else "MISMATCH"
    return (
        f"{metadata.family}: {verdict} on {len(frame)} rows ({int((~scorable).sum())} quarantined): labels "
        f"{'identical' if labels_equal else 'DIFFER'}, max |ours - sklearn| probability {error:.2g} "
        f"(allowed {tolerance:g})"
    )


def classifier_table(rows: int, repeat: int, chunk_sizes: list[int], train_rows: int) -> None:
    spec = load_spec(CLASSIFIER, ROOT / "models")
    data = TrainingSet(mixed_table(spec, train_rows, seed=1), spec)
    target = target_values(data.frame, spec)
    print(
        f"classifier (mixed types): {rows} rows x {len(spec.features)} features of models/{CLASSIFIER}.yaml "
        f"(numbers with gaps, an integer, a flag, strings), best of {repeat}; rows/s (ratio to scikit-learn)\n"
    )
    print(header(chunk_sizes, ("best ours/sklearn",)))
    checks = []
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / f"{CLASSIFIER}.parquet"
        mixed_table(spec, rows, seed=0).drop(columns=spec.target.column).to_parquet(path, index=False)
        raw = pd.read_parquet(path)
        for family in CLASSIFICATION_FAMILIES:
            model = build_estimator(spec, family).set_params(**middle(default_grid(spec, family)))
            model.fit(data.typed, target)
            model_file, metadata = export_bundle(model, data, family, Path(scratch))
            schema = batch_schema(metadata)  # as the flow chooses
            sessions = runners(str(model_file))
            calls: dict[Any, Callable[[], object]] = {"sklearn": partial(sklearn_scores, model, raw, spec)}
            for chunk in chunk_sizes:
                frames = list(chunks(path, chunk))
                for setting, session in sessions.items():
                    calls[chunk, setting] = partial(batch_scores, session, metadata, schema, frames, path.name)
            timings = best_seconds(calls, repeat)
            sklearn = timings.pop("sklearn")
            (chunk, setting), fastest = min(timings.items(), key=lambda item: item[1])
            best = f"{sklearn / fastest:.2f}x ({chunk_label(chunk)} {setting})"
            print(f"| {family} | " + " | ".join([*cells(rows, sklearn, timings), best]) + " |")
            checks.append(parity(model, spec, model_file, metadata, path))
    print("\nparity of the batch path with scikit-learn:\n" + "\n".join(f"- {line}" for line in checks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("regression", "classifier", "both"), default="both")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--chunks", type=int, nargs="+", default=[1_000, 10_000, 50_000, 200_000])
    parser.add_argument("--train-rows", type=int, default=20_000)
    args = parser.parse_args()
    sizes = (args.rows, args.repeat, args.chunks, args.train_rows)
    if args.task in ("regression", "both"):
        regression_table(*sizes)
    if args.task == "both":
        print()
    if args.task in ("classifier", "both"):
        classifier_table(*sizes)


if __name__ == "__main__":
    main()
