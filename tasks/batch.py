"""Batch scoring in chunks with onnxruntime: resumable output, quarantined rows, deterministic request ids.

Layout of an output folder::

    _manifest.json                    model, version, ONNX sha256, chunk size, the inputs' fingerprints
    <input stem>/part-00000.parquet   the input's columns + prediction (a classifier's label, and
                                      probability_<class> per class), model_version, request_id
    _rejected/<input stem>-part-00000.parquet   rows that could not be scored, with the reason

A part is written to a temporary name and renamed, so it exists whole or not at all. A re-run
with the same manifest skips the parts that exist — a crashed run resumes where it stopped and
never writes a row twice; a re-run with another version or chunk size is refused (choose
another output folder). Request ids are ``<stem>:<row>``, the same on every run.
"""

from __future__ import annotations

import io
import itertools
import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import pyarrow.parquet as pq

from serving.bundle import ModelMetadata
from serving.model import is_matrix_regression
from serving.protocols import finite_rows
from serving.typed import TypedSchema
from tasks.features import boolean_numbers, filled_categories
from tasks.onnx_convert import MATRIX_INPUT

SUFFIXES = (".csv", ".parquet", ".pq")
MANIFEST = "_manifest.json"
REJECTED = "_rejected"
NUMBERS_REASON = "a feature is missing or not a finite number"
NOT_FINITE_REASON = "the model's answer is not a finite number (an input far outside its training range?)"
MIN_SPLIT_ROWS = 2_000  # below this a chunk runs whole: handing halves to threads costs more than it saves


class BatchScoreError(ValueError):
    """The input or output folder cannot be scored into (what is wrong is in the message)."""


@dataclass(frozen=True)
class Manifest:
    """What an output folder holds scores of."""

    model: str
    version: str
    sha256: str
    chunk_rows: int
    inputs: dict[str, dict[str, int]]  # input name -> size, mtime_ns

    def check_against(self, existing: Manifest, output: Path) -> None:
        """Raise when ``existing`` (found in ``output``) is not the same scoring run."""
        mine, theirs = asdict(self), asdict(existing)
        differing = [key for key in mine if mine[key] != theirs[key]]
        if differing:
            described = ", ".join(f"{key} {theirs[key]!r} (now {mine[key]!r})" for key in differing)
            raise BatchScoreError(
                f"{output} holds scores of another run: {described}; choose another output folder "
                "or remove it to score again"
            )


class RowParallelSession:
    """One single-threaded onnxruntime session run on ``workers`` slices of a chunk's rows at once, outputs joined
    in row order; the same ``run`` as ``InferenceSession``.

    Measured by ``bench/batch_score.py``: every family scores faster this way than with one run on ``workers``
    intra-op threads (onnxruntime spreads a tree ensemble over trees, which is slower here than over rows:
    gradient boosting 1.14x scikit-learn against 1.00x). ``run`` is thread-safe in onnxruntime and releases
    the GIL.
    """

    def __init__(self, session: ort.InferenceSession, workers: int) -> None:
        self.session = session
        self.workers = max(workers, 1)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="score") if self.workers > 1 else None

    def run(self, outputs: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        rows = len(next(iter(feeds.values())))
        if self._pool is None or rows < MIN_SPLIT_ROWS * self.workers:
            return list(self.session.run(outputs, feeds))
        bounds = np.linspace(0, rows, self.workers + 1).astype(int)
        slices = [{name: values[a:b] for name, values in feeds.items()} for a, b in itertools.pairwise(bounds)]
        parts = list(self._pool.map(lambda part: self.session.run(outputs, part), slices))
        return [np.concatenate([part[index] for part in parts]) for index in range(len(parts[0]))]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def __enter__(self) -> RowParallelSession:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def input_files(source: Path) -> list[Path]:
    """The CSV/Parquet files of ``source`` (a file or a folder), sorted by name.

    Raises:
        BatchScoreError: Nothing to score there.
    """
    if source.is_file():
        files = [source] if source.suffix.lower() in SUFFIXES else []
    elif source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in SUFFIXES and not p.name.startswith("."))
    else:
        raise BatchScoreError(f"input {source} does not exist")
    if not files:
        raise BatchScoreError(f"input {source} holds no CSV or Parquet file ({', '.join(SUFFIXES)})")
    return files


def fingerprint(files: list[Path]) -> dict[str, dict[str, int]]:
    return {path.name: {"size": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns} for path in files}


def open_output(output: Path, manifest: Manifest) -> None:
    """Create the output folder with its manifest, or check that the existing one is this run's."""
    path = output / MANIFEST
    if path.exists():
        manifest.check_against(Manifest(**json.loads(path.read_text())), output)
        return
    output.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, json.dumps(asdict(manifest), indent=2).encode())


def count_rows(path: Path) -> int:
    if path.suffix.lower() == ".csv":
        with path.open("rb") as handle:
            return max(sum(1 for _ in handle) - 1, 0)
    return int(pq.ParquetFile(path).metadata.num_rows)


def chunks(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    """The file in frames of ``rows`` rows (the last may be shorter)."""
    if path.suffix.lower() == ".csv":
        yield from pd.read_csv(path, chunksize=rows)
    else:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=rows):
            yield batch.to_pandas()


def part_path(output: Path, source: Path, index: int) -> Path:
    return output / source.stem / f"part-{index:05d}.parquet"


def batch_schema(metadata: ModelMetadata) -> TypedSchema | None:
    """How a chunk's columns are typed for the model: None for a numeric-matrix regression (the fast path)."""
    return None if is_matrix_regression(metadata) else TypedSchema(metadata)


@dataclass(frozen=True)
class FileScores:
    """What scoring one input file did (on one machine or one Dask worker)."""

    rows: int = 0
    scored: int = 0
    rejected: int = 0
    written: int = 0  # parts written
    resumed: int = 0  # parts found whole from an earlier run
    worker: str = ""  # host:pid that scored it
    peak_rss_mb: float = 0.0  # the scoring process's peak memory so far


def score_file(
    session: Any,
    metadata: ModelMetadata,
    schema: TypedSchema | None,
    path: Path,
    output: Path,
    chunk_rows: int,
    version: str,
    progress: Callable[[int, int], None] | None = None,
) -> FileScores:
    """Score ``path`` chunk by chunk into ``output`` (a part per chunk, refused rows quarantined), skipping the parts
    an earlier run wrote whole. ``progress(index, rows)`` is called after each chunk."""
    rows = scored = rejected = written = resumed = 0
    for index, frame in enumerate(chunks(path, chunk_rows)):
        part = part_path(output, path, index)
        if part.exists():
            resumed += 1
        else:
            scorable, predictions, reasons = score_chunk(session, metadata, schema, frame, path.name)
            refused = output / REJECTED / f"{path.stem}-{part.name}"
            good, bad = write_part(frame, scorable, predictions, rows, path, version, part, refused, reasons)
            scored, rejected, written = scored + good, rejected + bad, written + 1
        rows += len(frame)
        if progress is not None:
            progress(index, len(frame))
    return FileScores(rows, scored, rejected, written, resumed)


def split_scorable(frame: pd.DataFrame, features: list[str], source: str) -> tuple[np.ndarray, pd.Series]:
    """The feature matrix (float64) and a mask of the rows that can be scored (every feature a finite number).

    Raises:
        BatchScoreError: A feature column is missing altogether.
    """
    missing = [column for column in features if column not in frame.columns]
    if missing:
        raise BatchScoreError(f"{source} lacks feature column(s) {', '.join(missing)} (has {list(frame.columns)})")
    numbers = frame[features].apply(pd.to_numeric, errors="coerce")
    scorable = numbers.notna().all(axis=1) & np.isfinite(numbers.to_numpy(dtype=float)).all(axis=1)
    return numbers.to_numpy(dtype=np.float64), scorable


def typed_scorable(
    frame: pd.DataFrame, schema: TypedSchema, source: str
) -> tuple[dict[str, np.ndarray], np.ndarray, pd.Series]:
    """A typed model's feeds for every row of ``frame`` (typed as training typed its data), which rows can be
    scored, and, per row, why it cannot be ('' when it can): a value that is not a number, not finite, or missing
    where the column may not be.

    Raises:
        BatchScoreError: A feature column is missing altogether.
    """
    missing = [column.name for column in schema.columns if column.name not in frame.columns]
    if missing:
        raise BatchScoreError(f"{source} lacks feature column(s) {', '.join(missing)} (has {list(frame.columns)})")
    reasons = np.full(len(frame), "", dtype=object)
    open_rows = np.ones(len(frame), dtype=bool)  # rows with no reason yet: the first reason found is kept

    def refuse(rows: np.ndarray, why: str) -> None:
        hit = rows & open_rows
        if hit.any():  # numpy masks throughout, strings only for refused rows (most chunks have none)
            reasons[hit] = why
            open_rows[hit] = False

    typed: list[np.ndarray] = []
    for column in schema.columns:
        raw = frame[column.name]
        if column.type == "string":
            values, absent = filled_categories(raw, column.fill or "")
            typed.append(values)
        else:
            absent = raw.isna().to_numpy()
            numbers = boolean_numbers(raw) if column.kind == "boolean" else pd.to_numeric(raw, errors="coerce")
            values = numbers.to_numpy(dtype="float64", na_value=np.nan)
            refuse(
                np.isnan(values) & ~absent,
                f"{column.name} is not {'true/false' if column.kind == 'boolean' else 'a number'}",
            )
            refuse(np.isinf(values), f"{column.name} is not finite")
            typed.append(values)
        if not column.nullable:
            refuse(absent, f"{column.name} is missing and may not be")
    refused = pd.Series(reasons, index=frame.index)
    if schema.matrix_input is not None:
        return {schema.matrix_input: np.column_stack(typed)}, open_rows, refused
    feeds = {column.input: values.reshape(-1, 1) for column, values in zip(schema.columns, typed, strict=True)}
    return feeds, open_rows, refused


def output_columns(outputs: dict[str, np.ndarray], classes: tuple[Any, ...]) -> dict[str, np.ndarray]:
    """A model's outputs as the columns of a scored part: ``prediction`` (a label or a value) and, for a
    classifier, ``probability_<class>`` per class."""
    if "label" not in outputs:
        return {"prediction": next(iter(outputs.values())).reshape(-1)}
    probabilities = outputs["probabilities"]
    return {
        "prediction": outputs["label"].reshape(-1),
        **{f"probability_{label}": probabilities[:, index] for index, label in enumerate(classes)},
    }


def score_chunk(
    session: ort.InferenceSession | RowParallelSession,
    metadata: ModelMetadata,
    schema: TypedSchema | None,
    frame: pd.DataFrame,
    source: str,
) -> tuple[pd.Series, np.ndarray | dict[str, np.ndarray], pd.Series | None]:
    """Score the rows of ``frame`` that can be: which rows, their predictions (or output columns), and why the
    others cannot be (None: the numeric model's one reason). ``schema`` is None for a regression on one matrix.
    A row the model answers with a non-finite number (an input far outside its training range) is not scored
    but quarantined with that reason, as the servers refuse it."""
    if schema is None:
        matrix, scorable = split_scorable(frame, list(metadata.features), source)
        answers = _answers(session, metadata, {MATRIX_INPUT: matrix[scorable.to_numpy()]})
        predictions = next(iter(answers.values())).reshape(-1)
        finite = finite_rows(predictions)
        if finite is None:
            return scorable, predictions, None
        reasons = pd.Series(np.where(scorable, "", NUMBERS_REASON), index=frame.index, dtype=object)
        _refuse_answers(scorable, reasons, finite)
        return scorable, predictions[finite], reasons
    feeds, rows, reasons = typed_scorable(frame, schema, source)
    scorable = pd.Series(rows, index=frame.index)
    chosen = feeds if rows.all() else {name: values[rows] for name, values in feeds.items()}  # no copy when all are
    outputs = _answers(session, metadata, chosen)
    finite = finite_rows(outputs)
    if finite is not None:
        _refuse_answers(scorable, reasons, finite)
        outputs = {name: values[finite] for name, values in outputs.items()}
    return scorable, output_columns(outputs, metadata.classes), reasons


def _answers(
    session: ort.InferenceSession | RowParallelSession, metadata: ModelMetadata, feeds: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The model's outputs by name for the rows in ``feeds``; none for none (a chunk whose every row is refused),
    without asking onnxruntime, whose ArrayFeatureExtractor refuses an empty batch."""
    if len(next(iter(feeds.values()))):
        return dict(zip(metadata.outputs, session.run(list(metadata.outputs), feeds), strict=True))
    # the exported graphs answer numbers in double precision (tasks.onnx_convert), labels as the classes are typed
    empty = {"label": np.asarray(metadata.classes)[:0], "probabilities": np.empty((0, len(metadata.classes)))}
    return {name: empty.get(name, np.empty((0, 1), dtype=np.float64)) for name in metadata.outputs}


def _refuse_answers(scorable: pd.Series, reasons: pd.Series, finite: np.ndarray) -> None:
    """Move the scored rows whose answer is not finite to the refused ones, in place."""
    refused = np.flatnonzero(scorable.to_numpy())[~finite]
    scorable.iloc[refused] = False
    reasons.iloc[refused] = NOT_FINITE_REASON


def write_part(
    frame: pd.DataFrame,
    scorable: pd.Series,
    predictions: np.ndarray | dict[str, np.ndarray],
    first_row: int,
    source: Path,
    version: str,
    part: Path,
    rejected: Path,
    reasons: pd.Series | None = None,
) -> tuple[int, int]:
    """Write the scored rows to ``part`` and the others to ``rejected`` with the reason (each whole or not at all).
    ``predictions``: one value per scored row, or output columns (:func:`output_columns`).

    Returns:
        Rows scored and rows rejected.
    """
    ids = pd.Series([f"{source.stem}:{first_row + i}" for i in range(len(frame))], index=frame.index)
    bad = ~scorable
    if bad.any():
        why = reasons[bad] if reasons is not None else NUMBERS_REASON
        quarantined = frame[bad].assign(request_id=ids[bad], reason=why)
        rejected.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(rejected, _parquet_bytes(quarantined))
    columns = predictions if isinstance(predictions, dict) else {"prediction": predictions}
    scored = frame[scorable].assign(**columns, model_version=version, request_id=ids[scorable])
    part.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(part, _parquet_bytes(scored))
    return int(scorable.sum()), int(bad.sum())


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.reset_index(drop=True).to_parquet(buffer, index=False)
    return buffer.getvalue()


def _write_atomically(path: Path, payload: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(payload)
    os.replace(temporary, path)


def read_scores(output: Path) -> pd.DataFrame:
    """Every scored row of an output folder (for people and tests)."""
    parts = sorted(p for p in output.glob("*/part-*.parquet") if p.parent.name != REJECTED)
    frames = [frame for frame in (pd.read_parquet(p) for p in parts) if len(frame)]  # a chunk refused whole: empty
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
