"""ONNX export of a logged candidate, gated on parity with the scikit-learn model it came from.

The candidate is loaded back from MLflow (so what is exported is what was logged), converted,
and both are scored on the holdout. The ONNX bundle (``model.onnx`` + ``metadata.json``, which
carries the parity and latency figures) is stored as artifacts of the candidate's run under
``onnx/``; its sha256, parity and latency figures become run tags, copied to the model version
at registration.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import onnxruntime as ort
import pandas as pd
from prefect import task
from pydantic import BaseModel, Field, PositiveInt

from mlops.spec import ModelSpec
from serving.bundle import Example, ModelMetadata, write_bundle
from serving.model import open_session
from tasks.features import category_fill
from tasks.onnx_convert import LABEL, MATRIX_INPUT, OUTPUT_NAME, Converted, ExportError, first_line, to_onnx
from tasks.tracking import client
from tasks.train import Candidate, TrainingSet

ONNX_ARTIFACT_DIR = "onnx"
UNREGISTERED = "unregistered"
EXAMPLE_ROWS = 8


class ExportConfig(BaseModel):
    """How the export is checked and measured."""

    parity_tolerance: float = Field(
        1e-5,
        gt=0,
        description="Regression: allowed max |onnx - sklearn| on the holdout, as a fraction of the target's range.",
    )
    probability_tolerance: float = Field(
        1e-5,
        gt=0,
        description="Classification: allowed max |onnx - sklearn| of any class probability (labels must be equal).",
    )
    latency_batch_sizes: list[PositiveInt] = Field(
        default_factory=lambda: [1, 100, 10_000], description="Rows per call for the latency figures."
    )
    latency_budget_seconds: float = Field(
        0.05,
        gt=0,
        description="Time spent timing each engine and batch size (medians spread about 1 % at 0.05 s as at 0.25 s).",
    )


@dataclass(frozen=True)
class Parity:
    """ONNX vs scikit-learn on the holdout.

    Attributes:
        max_abs_error: Largest absolute difference of predictions (classifiers: of any class probability).
        tolerance: The allowed difference (regression: config fraction x target range).
        target_range: max - min of the target on the training data (1 for classifiers).
        rows: Holdout rows compared.
        label_agreement: Share of equal labels (classifiers; None for regression). Anything below 1 fails.
    """

    max_abs_error: float
    tolerance: float
    target_range: float
    rows: int
    label_agreement: float | None = None

    @property
    def passed(self) -> bool:
        labels_ok = self.label_agreement is None or self.label_agreement == 1.0
        return bool(np.isfinite(self.max_abs_error)) and self.max_abs_error <= self.tolerance and labels_ok

    @property
    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        if self.label_agreement is not None:
            return (
                f"parity {verdict}: labels {self.label_agreement:.2%} equal, max |onnx - sklearn| probability "
                f"{self.max_abs_error:.3g} on {self.rows} holdout rows, allowed {self.tolerance:.3g}"
            )
        ratio = self.tolerance / self.target_range
        return (
            f"parity {verdict}: max |onnx - sklearn| {self.max_abs_error:.3g} on {self.rows} holdout rows, "
            f"allowed {self.tolerance:.3g} ({ratio:.0e} x target range {self.target_range:g})"
        )


@dataclass(frozen=True)
class OnnxExport:
    """A candidate's ONNX bundle, stored with its run.

    Attributes:
        run_id: The candidate's run.
        artifact_uri: ``runs:/<run>/onnx`` — the bundle directory.
        sha256: Checksum of ``model.onnx``.
        parity: The parity figures.
        latency_us: Median microseconds per call, keyed ``<engine>.<rows>``.
    """

    run_id: str
    artifact_uri: str
    sha256: str
    parity: Parity
    latency_us: dict[str, float]

    def tags(self) -> dict[str, str]:
        """Tags for the run and the model version."""
        return {
            "onnx_sha256": self.sha256,
            "onnx_uri": self.artifact_uri,
            "onnx_parity_max_abs_error": f"{self.parity.max_abs_error:.6g}",
            "onnx_parity_tolerance": f"{self.parity.tolerance:.6g}",
            "onnx_parity": "passed" if self.parity.passed else "failed",
            **{f"latency_us.{key}": f"{value:.1f}" for key, value in self.latency_us.items()},
        }


class ParityError(ExportError):
    """The ONNX model's predictions differ from the scikit-learn model's beyond the tolerance."""


def check_parity(
    inference: ort.InferenceSession,
    converted: Converted,
    model: Any,
    x_holdout: pd.DataFrame,
    target_range: float,
    tolerance: float,
) -> Parity:
    """Compare both engines on the typed holdout: a regressor's values (tolerance x target range), or a classifier's
    labels (all equal) and probabilities (within the tolerance) — told apart by the graph's ``label`` output."""
    outputs = inference.run(list(converted.outputs), converted.feeds(x_holdout))
    rows = len(x_holdout)
    if LABEL not in converted.outputs:
        expected = np.asarray(model.predict(x_holdout), dtype=np.float64).ravel()
        error = float(np.max(np.abs(outputs[0].ravel() - expected))) if rows else float("nan")
        return Parity(error, tolerance * target_range, target_range, rows)
    labels, probabilities = outputs
    agreement = float(np.mean(labels.ravel() == np.asarray(model.predict(x_holdout)))) if rows else float("nan")
    error = float(np.max(np.abs(probabilities - model.predict_proba(x_holdout)))) if rows else float("nan")
    return Parity(error, tolerance, 1.0, rows, agreement)


def known_answer(
    model: Any, x_holdout: pd.DataFrame, tolerance: float, rows: int = EXAMPLE_ROWS, classifier: bool = False
) -> Example:
    """A few holdout rows (typed as the model takes them: numbers, category strings, None for a gap) with the
    scikit-learn model's predictions (a classifier's labels and probabilities): what any deployment must answer."""
    sample = x_holdout.iloc[:rows]
    values = sample.astype(object).where(sample.notna(), None).to_numpy().tolist()
    inputs = tuple(tuple(v if v is None or isinstance(v, str) else float(v) for v in row) for row in values)
    predicted = np.asarray(model.predict(sample)).ravel().tolist()
    if not classifier:
        return Example(inputs, tuple(float(p) for p in predicted), tolerance)
    probabilities = np.asarray(model.predict_proba(sample), dtype=np.float64).tolist()
    labels = tuple(p if isinstance(p, str) else float(p) for p in predicted)
    return Example(inputs, labels, tolerance, tuple(tuple(row) for row in probabilities))


def median_microseconds(call: Callable[[], object], budget_seconds: float, max_calls: int = 1000) -> float:
    """Median wall time of ``call`` over as many calls as fit the budget (at least 3, after one warm-up)."""
    call()
    timings: list[float] = []
    deadline = time.perf_counter() + budget_seconds
    while len(timings) < 3 or (time.perf_counter() < deadline and len(timings) < max_calls):
        start = time.perf_counter()
        call()
        timings.append(time.perf_counter() - start)
    return float(np.median(timings) * 1e6)


def measure_latency(
    inference: ort.InferenceSession,
    converted: Converted,
    model: Any,
    features: pd.DataFrame,
    sizes: list[int],
    budget: float,
) -> dict[str, float]:
    """Median µs per call for both engines at each batch size (typed rows drawn with replacement)."""
    rng = np.random.default_rng(0)
    figures: dict[str, float] = {}
    for size in sizes:
        rows = features.iloc[rng.integers(0, len(features), size)].reset_index(drop=True)
        feeds = converted.feeds(rows)
        figures[f"sklearn.{size}"] = median_microseconds(partial(model.predict, rows), budget)
        figures[f"onnx.{size}"] = median_microseconds(partial(inference.run, None, feeds), budget)
    return figures


def _convert_or_record(
    model: Any, data: TrainingSet, sample: pd.DataFrame, candidate: Candidate, tracking_uri: str
) -> Converted:
    """Convert and run on ``sample``; on failure keep the converter's full output as ``export/error.txt`` in the
    run and raise a short error."""
    try:
        converted = to_onnx(model, data.input_columns)
        open_session(converted.model.SerializeToString()).run(None, converted.feeds(sample))
        return converted
    except Exception as error:  # converter and onnxruntime errors alike
        detail = error.detail if isinstance(error, ExportError) else traceback.format_exc()
        tracker = client(tracking_uri)
        tracker.log_text(candidate.run_id, detail, "export/error.txt")
        tracker.set_tag(candidate.run_id, "onnx_export", "failed")
        raise ExportError(
            f"ONNX export of run {candidate.run_id} ({candidate.family}) failed: {first_line(error)} "
            "(full output: export/error.txt in the run)",
            detail,
        ) from error


@task
def export_onnx(
    candidate: Candidate,
    data: TrainingSet,
    tracking_uri: str,
    config: ExportConfig,
) -> OnnxExport:
    """Convert the logged candidate to ONNX, check parity on the holdout, store the bundle with the run.

    Raises:
        ExportError: Conversion failed (the converter's output is a run artifact).
        ParityError: Predictions differ beyond the tolerance; nothing is stored as a bundle, and the
            run is tagged ``onnx_parity=failed`` with the figures.
    """
    tracker = client(tracking_uri)
    spec = data.spec
    model = mlflow.sklearn.load_model(candidate.model_uri)
    _, y_train, x_holdout, _ = data.split()
    converted = _convert_or_record(model, data, x_holdout.head(2), candidate, tracking_uri)
    onnx_bytes = converted.model.SerializeToString()
    inference = open_session(onnx_bytes)  # timed and checked exactly as the server will run it
    if spec.task.is_classification:
        parity = check_parity(inference, converted, model, x_holdout, 1.0, config.probability_tolerance)
    else:
        target_range = float(y_train.max() - y_train.min()) or 1.0
        parity = check_parity(inference, converted, model, x_holdout, target_range, config.parity_tolerance)
    if not parity.passed:
        tracker.set_tag(candidate.run_id, "onnx_parity", "failed")
        tracker.set_tag(candidate.run_id, "onnx_parity_summary", parity.summary)
        raise ParityError(f"ONNX export of run {candidate.run_id} ({candidate.family}) blocked: {parity.summary}")
    latency = measure_latency(
        inference, converted, model, data.typed, config.latency_batch_sizes, config.latency_budget_seconds
    )
    classifier = spec.task.is_classification
    with tempfile.TemporaryDirectory() as scratch:
        bundle = Path(scratch) / ONNX_ARTIFACT_DIR
        metadata = bundle_metadata(
            data,
            converted,
            onnx_bytes,
            candidate.family,
            tuple(candidate.classes),
            run_id=candidate.run_id,
            example=known_answer(model, x_holdout, parity.tolerance, classifier=classifier),
            extra={"parity": {**asdict(parity), "summary": parity.summary}, "latency_us": latency},
        )
        write_bundle(bundle, onnx_bytes, metadata)
        tracker.log_artifacts(candidate.run_id, str(bundle), ONNX_ARTIFACT_DIR)
    export = OnnxExport(
        candidate.run_id, f"runs:/{candidate.run_id}/{ONNX_ARTIFACT_DIR}", metadata.sha256, parity, latency
    )
    for key, value in {**export.tags(), "onnx_parity_summary": parity.summary}.items():
        tracker.set_tag(candidate.run_id, key, value)
    return export


def bundle_metadata(
    data: TrainingSet,
    converted: Converted,
    onnx_bytes: bytes,
    family: str,
    classes: tuple[Any, ...] = (),
    version: str = UNREGISTERED,
    **more: Any,
) -> ModelMetadata:
    """What a bundle says of a converted model trained on ``data`` (``more``: run id, example, extra), including the
    spec's id and ignored columns, which a server accepts beside the features."""
    spec = data.spec
    return ModelMetadata(
        name=spec.name,
        version=version,
        features=tuple(spec.feature_names),
        input_name=MATRIX_INPUT if converted.matrix else "",
        output_name=LABEL if spec.task.is_classification else OUTPUT_NAME,
        sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        family=family,
        task=spec.task.value,
        inputs=tuple(input_schema(spec, converted, data.typed)),
        outputs=converted.outputs,
        classes=classes,
        ids=tuple(spec.ids),
        ignore=tuple(spec.ignore),
        **more,
    )


def input_schema(spec: ModelSpec, converted: Converted, typed: pd.DataFrame) -> list[dict[str, Any]]:
    """Per feature: column, graph input, tensor type, kind, nullable; for categories the string a missing value
    becomes and the categories seen in training (a server counts the others)."""
    by_column = {column.column: column for column in converted.columns}
    return [
        {
            "column": feature.name,
            "input": MATRIX_INPUT if converted.matrix else by_column[feature.name].name,
            "type": by_column[feature.name].type,
            "kind": feature.kind.value,
            "nullable": feature.nullable,
            **(
                {"fill": category_fill(feature), "categories": sorted(map(str, typed[feature.name].unique()))}
                if feature.is_categorical
                else {}
            ),
        }
        for feature in spec.features
    ]
