"""Registering a model trained elsewhere: the rows it is checked on, the checks, the comparison, the run.

The register flow (``flows/register.py``) wires these; ``tasks.outside`` reads the sources.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NONE

from mlops.spec import ModelSpec
from serving.bundle import Example, write_bundle
from serving.model import open_session
from tasks.bundle_scorer import BundleScorer
from tasks.dataset import dataset_digest
from tasks.evaluate import Comparison, champion_version, compare
from tasks.export import (
    ONNX_ARTIFACT_DIR,
    ExportConfig,
    Parity,
    ParityError,
    bundle_metadata,
    check_parity,
    known_answer,
)
from tasks.features import target_values, typed_features
from tasks.ingest import accepted_frame
from tasks.metrics import holdout_metrics, model_outputs
from tasks.onnx_convert import Converted, to_onnx
from tasks.outside import Source, SourceError, adapt_graph, check_estimator, graph_labels
from tasks.reference import log_reference
from tasks.tracking import client
from tasks.train import TrainingSet, trusted_types

CHECK_ROWS = 200


@dataclass(frozen=True)
class CheckRows:
    """The rows a source is checked on: the accepted data's holdout (with the target), else a reference file or
    the spec's example data."""

    frame: pd.DataFrame  # raw rows with the spec's features (and the target when known)
    data: TrainingSet
    x: pd.DataFrame  # typed features of the rows checked
    y: pd.Series | None  # their target, when known (metrics need it)
    origin: str
    digest: str = "none"


def _read_table(path: str) -> pd.DataFrame:
    if path.endswith(".parquet"):
        return pd.read_parquet(path)
    return pd.read_csv(path)


def check_rows(spec: ModelSpec, data_uri: str, reference: str | None) -> CheckRows:
    """Where the source is checked and measured.

    Raises:
        SourceError: No rows anywhere: no accepted data, no reference file, no example data in the spec.
    """
    frame = accepted_frame(data_uri)
    if frame is not None:
        data = TrainingSet(frame, spec)
        try:
            _, _, x_holdout, y_holdout = data.split()
            return CheckRows(frame, data, x_holdout, y_holdout, "the accepted data's holdout", dataset_digest(frame))
        except ValueError:  # too little accepted data for a holdout: check on all of it
            pass
    if frame is None and reference is not None:
        frame, origin = _read_table(reference), f"the reference file {reference}"
    elif frame is None and spec.data.example is not None:
        from tasks.sample_data import example_frame

        frame, origin = example_frame(spec).head(CHECK_ROWS), "the spec's example data"
    elif frame is not None:
        origin = "the accepted data"
    else:
        raise SourceError(
            f"{spec.name} has no accepted data and names no example data: give --reference rows to check it on"
        )
    missing = [column for column in spec.feature_names if column not in frame.columns]
    if missing:
        raise SourceError(f"{origin} lacks the spec's features {missing}")
    data = TrainingSet(frame, spec)
    y = target_or_none(frame, spec)
    return CheckRows(frame, data, data.typed, y, origin)


def target_or_none(frame: pd.DataFrame, spec: ModelSpec) -> pd.Series | None:
    if spec.target.column not in frame.columns or frame[spec.target.column].isna().any():
        return None
    return target_values(frame, spec)


def _classes(spec: ModelSpec, rows: CheckRows, model: Any) -> tuple[Any, ...]:
    if not spec.task.is_classification:
        return ()
    if model is not None and hasattr(model, "classes_"):
        return tuple(np.asarray(model.classes_).tolist())
    if spec.target.classes is not None:
        return tuple(sorted(spec.target.classes, key=str))
    if rows.y is not None:
        return tuple(sorted(rows.y.unique().tolist(), key=str))
    raise SourceError("an ONNX classifier needs its class labels: give target.classes in the spec")


def _expected_error(
    scorer: Any, expected: str, spec: ModelSpec, config: ExportConfig
) -> tuple[float, float, float, float | None]:
    """The largest difference from an expected-answers file, what is allowed, the range it is a share of, and the
    share of equal labels (classifiers).

    Raises:
        SourceError: The file lacks the features or the answers, or the model answers otherwise.
    """
    frame = _read_table(expected)
    missing = [column for column in [*spec.feature_names, "prediction"] if column not in frame.columns]
    if missing:
        raise SourceError(f"{expected} lacks the columns {missing} (the spec's features and `prediction`)")
    typed = typed_features(frame, spec)
    answered = scorer.predict(typed)
    if not spec.task.is_classification:
        error = float(np.max(np.abs(np.asarray(answered, dtype=float) - frame["prediction"].to_numpy(float))))
        spread = max(float(np.ptp(frame["prediction"].to_numpy(float))), 1.0)
        allowed = config.parity_tolerance * spread
        if not error <= allowed:
            raise SourceError(f"the model's answers differ from {expected} by {error:.3g} (allowed {allowed:.3g})")
        return error, allowed, spread, None
    agreement = float(np.mean([str(a) == str(b) for a, b in zip(answered, frame["prediction"], strict=True)]))
    if agreement < 1.0:
        raise SourceError(f"the model's labels agree with {expected} on {agreement:.1%} of its rows only")
    columns = [f"probability.{label}" for label in scorer.classes_]
    if not all(column in frame.columns for column in columns):
        return 0.0, config.probability_tolerance, 1.0, agreement
    error = float(np.max(np.abs(scorer.predict_proba(typed) - frame[columns].to_numpy(float))))
    if not error <= config.probability_tolerance:
        raise SourceError(f"the model's probabilities differ from {expected} by {error:.3g}")
    return error, config.probability_tolerance, 1.0, agreement


@dataclass(frozen=True)
class Checked:
    """A source made into a served graph, with what it passed."""

    scorer: Any  # predicts like the model on typed features: the source itself, or its graph
    converted: Converted
    onnx_bytes: bytes
    parity: Parity
    example: Example
    classes: tuple[Any, ...]
    summary: str


@task(cache_policy=NONE)  # its inputs hold models and sessions, which Prefect cannot hash
def check_source(
    source: Source, spec: ModelSpec, rows: CheckRows, config: ExportConfig, expected: str | None
) -> Checked:
    """The spec's contract, then the ONNX graph: exported with its parity gate (a Python model), or adapted and
    smoke-checked (an ONNX file), and the expected answers where given.

    Raises:
        SourceError, ExportError, ParityError: What does not fit, in one line.
    """
    sample = rows.x.head(CHECK_ROWS)
    columns = rows.data.input_columns
    if source.estimator is not None:
        model = source.estimator
        check_estimator(model, spec, sample.head(20))
        converted = to_onnx(model, columns)
        session = open_session(converted.model.SerializeToString())
        classes = _classes(spec, rows, model)
        if spec.task.is_classification:
            parity = check_parity(session, converted, model, sample, 1.0, config.probability_tolerance)
        else:
            answers = np.asarray(model.predict(sample), dtype=float)
            spread = float(np.ptp(rows.y)) if rows.y is not None else float(np.ptp(answers))
            parity = check_parity(session, converted, model, sample, spread or 1.0, config.parity_tolerance)
        if not parity.passed:
            raise ParityError(f"the ONNX export of {source.family} is blocked: {parity.summary}")
        example = known_answer(model, sample, parity.tolerance, classifier=spec.task.is_classification)
        scorer, summary = model, f"ONNX {parity.summary}"
    else:
        assert source.graph is not None
        converted = adapt_graph(source.graph, spec)
        classes = _classes(spec, rows, None)
        onnx_bytes = converted.model.SerializeToString()
        try:
            session = open_session(onnx_bytes)
            outputs = session.run(list(converted.outputs), converted.feeds(sample))
        except Exception as error:  # onnxruntime: unknown ops, wrong types, shapes
            raise SourceError(f"onnxruntime cannot run {source.uri} on the spec's columns: {error}") from error
        if spec.task.is_classification:
            graph_labels(outputs[0], spec, list(classes))
            if outputs[1].shape[1:] != (len(classes),):
                raise SourceError(f"the graph answers {outputs[1].shape[1:]} probabilities for {len(classes)} classes")
        elif not np.isfinite(outputs[0]).all():
            raise SourceError(f"the graph answers non-finite values on {rows.origin}")
        metadata = bundle_metadata(rows.data, converted, onnx_bytes, source.family, classes)
        scorer = BundleScorer(onnx_bytes, metadata)
        tolerance = config.probability_tolerance if classes else config.parity_tolerance
        difference, allowed, spread, agreement = (
            _expected_error(scorer, expected, spec, config) if expected else (0.0, tolerance, 1.0, None)
        )
        parity = Parity(difference, allowed, spread, len(sample), agreement if classes else None)
        example = known_answer(scorer, sample, tolerance, classifier=bool(classes))  # the graph's own answers
        summary = f"ONNX file run on {len(sample)} rows of {rows.origin}" + (
            f", answers within {difference:.3g} of {expected}" if expected else ""
        )
    return Checked(scorer, converted, converted.model.SerializeToString(), parity, example, classes, summary)


@task(cache_policy=NONE)  # its inputs hold models and sessions, which Prefect cannot hash
def compare_with_champion(
    checked: Checked, spec: ModelSpec, rows: CheckRows, tracking_uri: str, model_name: str
) -> tuple[dict[str, float], Comparison]:
    """Holdout metrics (where the rows carry the target) and the spec's promotion rule against the champion."""
    metrics = holdout_metrics(spec.task, checked.scorer, rows.x, rows.y) if rows.y is not None else {}
    version = champion_version(tracking_uri, model_name)
    if version is None:
        return metrics, Comparison(True, None, metrics, {}, ())
    if not metrics:
        return metrics, Comparison(False, version, metrics, {}, ())
    champion = BundleScorer.from_registry(tracking_uri, f"models:/{model_name}/{version}")
    theirs = holdout_metrics(spec.task, champion, rows.x, rows.y)
    better, table = compare(metrics, theirs, spec)
    return metrics, Comparison(better, version, metrics, theirs, table)


@task(cache_policy=NONE)  # its inputs hold models and sessions, which Prefect cannot hash
def log_registration(
    source: Source,
    spec: ModelSpec,
    rows: CheckRows,
    checked: Checked,
    metrics: dict[str, float],
    reference: str | None,
    tracking: str,
    identity: str,
) -> tuple[str, str, dict[str, str]]:
    """One MLflow run holding the model, its ONNX bundle, the spec, the monitoring reference and where it came from;
    returns the run and experiment ids and the logged model's uri, id and the bundle's sha256."""
    import mlflow

    client(tracking)
    mlflow.set_experiment(spec.experiment)
    tags = {"trained_outside": "true", "source_uri": source.uri, "source_sha256": source.sha256}
    with mlflow.start_run(run_name=f"registered-{Path(source.uri.rstrip('/')).name[:40]}", tags=tags) as run:
        mlflow.log_params(
            {
                "model": spec.name,
                "task": spec.task.value,
                "family": source.family,
                "source_kind": source.kind,
                "source_flavour": source.flavour,
                "registered_by": identity,
                "checked_on": rows.origin,
                **({"classes": _json(checked.classes)} if checked.classes else {}),
            }
        )
        if metrics:
            mlflow.log_metrics(metrics)
        mlflow.log_dict(spec.model_dump(mode="json"), "spec.json")
        if source.estimator is not None:
            info = mlflow.sklearn.log_model(
                source.estimator, name="model", skops_trusted_types=trusted_types(source.estimator)
            )
        else:
            assert source.graph is not None
            info = mlflow.onnx.log_model(source.graph, name="model")
        _log_reference(spec, rows, checked, reference)
        metadata = bundle_metadata(
            rows.data,
            checked.converted,
            checked.onnx_bytes,
            source.family,
            checked.classes,
            run_id=run.info.run_id,
            example=checked.example,
            extra={
                "parity": {**asdict(checked.parity), "summary": checked.parity.summary},
                "source": {"uri": source.uri, "sha256": source.sha256, "flavour": source.flavour},
            },
        )
        with tempfile.TemporaryDirectory() as scratch:
            bundle = Path(scratch) / ONNX_ARTIFACT_DIR
            write_bundle(bundle, checked.onnx_bytes, metadata)
            mlflow.log_artifacts(str(bundle), ONNX_ARTIFACT_DIR)
        mlflow.set_tags(
            {
                "onnx_sha256": metadata.sha256,
                "onnx_uri": f"runs:/{run.info.run_id}/{ONNX_ARTIFACT_DIR}",
                "onnx_parity": "passed",
                "onnx_parity_summary": checked.summary,
            }
        )
    return (
        run.info.run_id,
        run.info.experiment_id,
        {
            "model_uri": info.model_uri,
            "model_id": info.model_id,
            "sha256": metadata.sha256,
        },
    )


def _log_reference(spec: ModelSpec, rows: CheckRows, checked: Checked, reference: str | None) -> None:
    """The monitoring reference from the accepted data, else the reference file (nothing otherwise)."""
    frame = rows.frame if rows.origin.startswith("the accepted data") or reference else None
    if frame is None:
        return
    typed = typed_features(frame, spec)
    outputs = model_outputs(spec.task, checked.scorer, typed)
    log_reference(frame.assign(**typed), spec.feature_names, outputs, spec.categorical_features)


def _json(values: Any) -> str:
    import json

    return json.dumps(list(values), default=str)
