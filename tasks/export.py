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

from serving.bundle import Example, ModelMetadata, write_bundle
from serving.model import open_session
from tasks.onnx_convert import INPUT_NAME, OUTPUT_NAME, ExportError, to_onnx
from tasks.tracking import client
from tasks.train import Candidate, TrainingSet

ONNX_ARTIFACT_DIR = "onnx"
UNREGISTERED = "unregistered"
EXAMPLE_ROWS = 8


class ExportConfig(BaseModel):
    """How the export is checked and measured."""

    parity_tolerance: float = Field(
        1e-5, gt=0, description="Allowed max |onnx - sklearn| on the holdout, as a fraction of the target's range."
    )
    latency_batch_sizes: list[PositiveInt] = Field(
        default_factory=lambda: [1, 100, 10_000], description="Rows per call for the latency figures."
    )
    latency_budget_seconds: float = Field(0.25, gt=0, description="Time spent timing each engine and batch size.")


@dataclass(frozen=True)
class Parity:
    """ONNX vs scikit-learn on the holdout.

    Attributes:
        max_abs_error: Largest absolute difference of predictions.
        tolerance: The allowed difference (config fraction x target range).
        target_range: max - min of the target on the training data.
        rows: Holdout rows compared.
    """

    max_abs_error: float
    tolerance: float
    target_range: float
    rows: int

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.max_abs_error)) and self.max_abs_error <= self.tolerance

    @property
    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
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
    inference: ort.InferenceSession, model: Any, x_holdout: pd.DataFrame, target_range: float, tolerance: float
) -> Parity:
    expected = np.asarray(model.predict(x_holdout), dtype=np.float64).ravel()
    actual = inference.run(None, {INPUT_NAME: x_holdout.to_numpy(dtype=np.float64)})[0].ravel()
    error = float(np.max(np.abs(actual - expected))) if len(expected) else float("nan")
    return Parity(error, tolerance * target_range, target_range, len(expected))


def known_answer(model: Any, x_holdout: pd.DataFrame, tolerance: float, rows: int = EXAMPLE_ROWS) -> Example:
    """A few holdout rows with the scikit-learn model's predictions: what any deployment must answer."""
    sample = x_holdout.iloc[:rows]
    predictions = np.asarray(model.predict(sample), dtype=np.float64).ravel()
    return Example(
        inputs=tuple(tuple(float(v) for v in row) for row in sample.to_numpy(dtype=np.float64)),
        predictions=tuple(float(p) for p in predictions),
        tolerance=tolerance,
    )


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
    inference: ort.InferenceSession, model: Any, features: pd.DataFrame, sizes: list[int], budget: float
) -> dict[str, float]:
    """Median µs per call for both engines at each batch size (rows drawn with replacement)."""
    rng = np.random.default_rng(0)
    figures: dict[str, float] = {}
    for size in sizes:
        rows = features.iloc[rng.integers(0, len(features), size)].reset_index(drop=True)
        matrix = rows.to_numpy(dtype=np.float64)
        figures[f"sklearn.{size}"] = median_microseconds(partial(model.predict, rows), budget)
        figures[f"onnx.{size}"] = median_microseconds(partial(inference.run, None, {INPUT_NAME: matrix}), budget)
    return figures


@task
def export_onnx(
    candidate: Candidate,
    data: TrainingSet,
    tracking_uri: str,
    model_name: str,
    config: ExportConfig,
) -> OnnxExport:
    """Convert the logged candidate to ONNX, check parity on the holdout, store the bundle with the run.

    Raises:
        ExportError: Conversion failed.
        ParityError: Predictions differ beyond the tolerance; nothing is stored as a bundle, and the
            run is tagged ``onnx_parity=failed`` with the figures.
    """
    tracker = client(tracking_uri)
    model = mlflow.sklearn.load_model(candidate.model_uri)
    _, y_train, x_holdout, _ = data.split()
    features = data.features
    onnx_bytes = to_onnx(model, len(features)).SerializeToString()
    inference = open_session(onnx_bytes)  # timed and checked exactly as the server will run it
    target_range = float(y_train.max() - y_train.min()) or 1.0
    parity = check_parity(inference, model, x_holdout, target_range, config.parity_tolerance)
    if not parity.passed:
        tracker.set_tag(candidate.run_id, "onnx_parity", "failed")
        tracker.set_tag(candidate.run_id, "onnx_parity_summary", parity.summary)
        raise ParityError(f"ONNX export of run {candidate.run_id} ({candidate.family}) blocked: {parity.summary}")
    latency = measure_latency(
        inference, model, data.frame[features], config.latency_batch_sizes, config.latency_budget_seconds
    )
    with tempfile.TemporaryDirectory() as scratch:
        bundle = Path(scratch) / ONNX_ARTIFACT_DIR
        metadata = ModelMetadata(
            name=model_name,
            version=UNREGISTERED,
            features=tuple(features),
            input_name=INPUT_NAME,
            output_name=OUTPUT_NAME,
            sha256=hashlib.sha256(onnx_bytes).hexdigest(),
            run_id=candidate.run_id,
            family=candidate.family,
            example=known_answer(model, x_holdout, parity.tolerance),
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
