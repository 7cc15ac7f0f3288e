"""Batch scoring XGBoost and LightGBM: the batch flow's ONNX path vs the library's own predict, by chunk size and
threading. Prints markdown tables; not a test.

    .venv/bin/python bench/boosting_batch.py [--rows 1000000] [--repeat 3] [--chunks 10000 50000 200000]
        [--libraries xgboost lightgbm]

Each library's regressor is fitted on the diabetes table (models/diabetes.yaml, the middle of the family's default
grid: 300 trees; seed 42) and bundled as training bundles it; the rows to score are the table resampled to
``--rows`` rows with 1 % noise on every column (``bench.batch_score.mixed_table``, seed 0). Every engine scores all
rows; rows/s is the best of ``--repeat`` rounds in which the engines take turns (``bench.batch_score.best_seconds``).

- the library: XGBoost ``Booster.inplace_predict`` on the float64 matrix and ``Booster.predict`` on a ``DMatrix``
  built from it (construction timed), both ``nthread=2``; LightGBM ``Booster.predict`` with ``num_threads=2`` (and
  1, for reference).
- ours, as ``flows/batch_score.py`` runs it: the input's chunks (DataFrames, as ``tasks.batch.chunks`` yields
  them; reading not timed) through ``tasks.batch.score_chunk`` (numbers checked, the session, finite answers) on a
  ``RowParallelSession`` of one single-threaded session, 2 slices at once (``--threads 0`` on 2 cores).
- onnxruntime alone on slices of the matrix: t1 one intra-op thread, t2 two, r2 two row slices at once on one
  single-threaded session (``RowParallelSession``), t2-spin two threads with ``session.intra_op.allow_spinning=1``
  (the project's sessions turn spinning off).

- ``--treelite``: the model compiled to C by treelite + tl2cgen (gcc), 1 and 2 threads. Not in the project's
  environment; into a folder of its own, without touching the virtualenv::

      uv pip install --python .venv/bin/python --target /tmp/treelite-pkgs --no-deps treelite==4.8.1 tl2cgen==1.0.0
      PYTHONPATH=/tmp/treelite-pkgs .venv/bin/python bench/boosting_batch.py --treelite

  (tl2cgen 1.0.0 carries treelite 4.1.2 and warns that the 4.8.1 model is newer; its answers matched: LightGBM's
  exactly, XGBoost's within 5.8e-4, as onnxruntime's.)

Below the table: each engine's largest difference from the library's own answer on the first 10,000 rows.

What closes a gap where onnxruntime loses — measured with ``--rows 100000 --repeat 2`` on the 2 cores while a test
suite ran beside it (two-thread figures swung 2x between runs; one-thread figures held): re-measure on a quiet
machine before quoting.

- XGBoost (300 trees, depth 6): onnxruntime loses per thread, about 2.9x (t1 ~143k rows/s, ``inplace_predict`` on
  one thread ~411k). No chunk size (10k-200k), second intra-op thread, row slicing (r2) or spinning threads closed
  it; treelite + tl2cgen did not either (~135k rows/s on one thread, nothing more from a second). For XGBoost at
  batch scale the library's own ``inplace_predict`` is the fast path; ``predict`` through a ``DMatrix`` was 0-10 %
  slower.
- LightGBM (300 trees, 31 leaves): onnxruntime wins, per thread ~1.5x (t1 ~78k rows/s, LightGBM ``predict``
  ``num_threads=1`` ~50k; tl2cgen ~65k), and the batch flow's path stays ahead with 2 slices.
- Spinning threads (``allow_spinning=1``) helped one quiet run at 10k-row chunks and hurt every run under load:
  the project's sessions keep them off.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import DIABETES_FEATURES, middle_params, table_spec, write_model_bundle
from bench.batch_score import SETTINGS, best_seconds, chunk_label, mixed_table, runners, score_matrix
from serving.model import open_session
from tasks.batch import RowParallelSession, batch_schema, score_chunk
from tasks.features import family_estimator
from tasks.onnx_convert import MATRIX_INPUT
from tasks.sample_data import diabetes_frame
from tasks.train import TrainingSet

LIBRARIES = ("xgboost", "lightgbm")
THREADS = 2
CHECK_ROWS = 10_000


def spinning_session(model: str) -> ort.InferenceSession:
    """Two intra-op threads that spin while waiting (onnxruntime's default, which ``open_session`` turns off)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def xgboost_predict(booster: Any, matrix: np.ndarray, threads: int, inplace: bool) -> np.ndarray:
    import xgboost

    booster.set_param({"nthread": threads})
    if inplace:
        return np.asarray(booster.inplace_predict(matrix))
    return np.asarray(booster.predict(xgboost.DMatrix(matrix, feature_names=booster.feature_names, nthread=threads)))


def native_calls(library: str, model: Any, matrix: np.ndarray) -> dict[str, Callable[[], Any]]:
    """The library's own predict calls on the whole matrix (the first is the reference answer)."""
    if library == "xgboost":
        booster = model.get_booster()
        return {
            f"xgboost {'inplace_predict' if inplace else 'predict (DMatrix)'}, {threads} thread(s)": partial(
                xgboost_predict, booster, matrix, threads, inplace
            )
            for inplace, threads in ((True, THREADS), (False, THREADS), (True, 1))
        }
    return {
        f"lightgbm predict, num_threads={threads}": partial(model.booster_.predict, matrix, num_threads=threads)
        for threads in (THREADS, 1)
    }


def compiled_calls(library: str, model: Any, matrix: np.ndarray, directory: Path) -> dict[str, Callable[[], Any]]:
    """The model compiled to C by treelite + tl2cgen (gcc), predicting on 1 and 2 threads; none if not installed.
    XGBoost's trees compare float32, LightGBM's float64: the matrix is handed over in that type (tl2cgen 1.0 would
    otherwise ask numpy 2 for a copy-free cast it cannot make)."""
    try:
        import tl2cgen
        import treelite
    except ImportError:
        return {}
    frontend = treelite.frontend
    trees = (
        frontend.from_xgboost(model.get_booster()) if library == "xgboost" else frontend.from_lightgbm(model.booster_)
    )
    library_path = directory / f"{library}-tl2cgen.so"
    tl2cgen.export_lib(trees, toolchain="gcc", libpath=str(library_path), params={"parallel_comp": THREADS})
    values = np.ascontiguousarray(matrix, dtype=np.float32 if library == "xgboost" else np.float64)
    predictors = {threads: tl2cgen.Predictor(str(library_path), nthread=threads) for threads in (1, THREADS)}
    return {
        f"treelite + tl2cgen, {threads} thread(s)": partial(
            lambda p, v: p.predict(tl2cgen.DMatrix(v)), predictors[threads], values
        )
        for threads in predictors
    }


def batch_path(session: RowParallelSession, metadata: Any, frames: list[Any]) -> np.ndarray:
    """Every chunk through the batch flow's scoring; the predictions joined."""
    schema = batch_schema(metadata)
    return np.concatenate([np.asarray(score_chunk(session, metadata, schema, f, "bench")[1]) for f in frames])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunks", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--libraries", nargs="+", choices=LIBRARIES, default=list(LIBRARIES))
    parser.add_argument("--treelite", action="store_true", help="also the model compiled by treelite + tl2cgen")
    args = parser.parse_args()
    spec = table_spec("diabetes")
    data = TrainingSet(diabetes_frame(), spec)
    x, y = data.typed[DIABETES_FEATURES], data.frame[spec.target.column]
    frame = mixed_table(spec, args.rows, seed=0)[DIABETES_FEATURES]
    matrix = frame.to_numpy(dtype=np.float64)
    print(
        f"{args.rows:,} rows x {len(DIABETES_FEATURES)} numbers, best of {args.repeat}; rows/s, ratio to the library\n"
    )
    print("| model | engine | chunk rows | rows/s | vs the library's fastest |\n|---|---|---|---|---|")
    checks = []
    with tempfile.TemporaryDirectory() as scratch:
        for library in args.libraries:
            model = family_estimator(library, classification=False, seed=spec.training.seed)
            model.set_params(**middle_params(spec, library), n_jobs=THREADS).fit(x, y)
            bundle, metadata = write_model_bundle(model, data, library, Path(scratch))
            model_file = bundle / "model.onnx"
            ours = RowParallelSession(open_session(str(model_file), 1), THREADS)
            sessions = {**runners(str(model_file)), "t2-spin": spinning_session(str(model_file))}
            calls: dict[tuple[str, int], Callable[[], Any]] = {
                (name, 0): call for name, call in native_calls(library, model, matrix).items()
            }
            if args.treelite:
                compiled = compiled_calls(library, model, matrix, Path(scratch))
                calls.update({(name, -1): call for name, call in compiled.items()})
                if not compiled:
                    print(f"(treelite/tl2cgen not importable: {library} not compiled)")
            for chunk in args.chunks:
                frames = [frame.iloc[start : start + chunk] for start in range(0, len(frame), chunk)]
                calls["ours: batch flow (score_chunk, r2)", chunk] = partial(batch_path, ours, metadata, frames)
                for setting, session in sessions.items():
                    calls[f"onnxruntime {setting}", chunk] = partial(score_matrix, session, matrix, chunk)
            timings = best_seconds(calls, args.repeat)
            fastest = min(seconds for (_, chunk), seconds in timings.items() if chunk == 0)
            for (engine, chunk), seconds in timings.items():
                size = chunk_label(chunk) if chunk > 0 else "all"
                print(f"| {library} | {engine} | {size} | {args.rows / seconds:,.0f} | {fastest / seconds:.2f}x |")
            head = matrix[:CHECK_ROWS]
            expected = np.asarray(next(iter(native_calls(library, model, head).values()))(), dtype=np.float64)
            answers = {
                "ours": batch_path(ours, metadata, [frame.iloc[:CHECK_ROWS]]),
                **{s: sessions[s].run(None, {MATRIX_INPUT: head})[0].ravel() for s in SETTINGS},
            }
            checks.append(
                f"- {library}: "
                + ", ".join(f"{name} {np.abs(values - expected).max():.1e}" for name, values in answers.items())
            )
            ours.close()
    print(f"\nmax |engine - library| on the first {CHECK_ROWS:,} rows:\n" + "\n".join(checks))


if __name__ == "__main__":
    main()
