"""The training reference a model version is monitored against, stored with its MLflow run.

At training time (:func:`log_reference`, inside the candidate's run) two artifacts are written
under ``reference/``:

- ``profile.json``: a :class:`tasks.drift.ReferenceProfile` of every feature and of the model's
  outputs over the whole training set — what the fast drift decision needs, a few hundred kB;
- ``sample.parquet``: a uniform sample of training rows (features, target, outputs) — what
  the Evidently report and the live-input validation suite are built from;
- ``calibration.json`` (classifiers): a :class:`tasks.estimate.Calibration` fitted on the holdout,
  from which the monitor estimates accuracy before labels arrive.

A regression's output is ``prediction`` (a number); a classifier's is ``prediction`` (the label, a
category) and ``probability.<class>`` per class (numbers).

The monitor reads them back for the champion's version (:func:`load_reference`), so a window is
never compared with data the serving model was not trained on.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from tasks.drift import ReferenceProfile
from tasks.estimate import Calibration
from tasks.tracking import client

ARTIFACT_DIR = "reference"
PROFILE = "profile.json"
SAMPLE = "sample.parquet"
CALIBRATION = "calibration.json"
PREDICTION = "prediction"
PROBABILITY = "probability."
SAMPLE_ROWS = 5000


def probability_columns(classes: list[Any] | tuple[Any, ...]) -> list[str]:
    """The column of each class's probability, in ``classes`` order."""
    return [f"{PROBABILITY}{label}" for label in classes]


@dataclass(frozen=True)
class Outputs:
    """What a model answered for a frame: the prediction (or label) and, for classifiers, the probabilities."""

    prediction: np.ndarray
    probabilities: np.ndarray | None = None
    classes: tuple[Any, ...] = ()

    def columns(self) -> dict[str, np.ndarray]:
        if self.probabilities is None:
            return {PREDICTION: np.asarray(self.prediction, dtype=float)}
        labels = np.asarray([str(label) for label in self.prediction], dtype=object)
        names = probability_columns(self.classes)
        return {PREDICTION: labels, **{name: self.probabilities[:, i] for i, name in enumerate(names)}}


class MissingReferenceError(RuntimeError):
    """The model version's training run stored no reference (trained before references existed)."""


@dataclass(frozen=True)
class Reference:
    """A version's training reference: profile of features + prediction, and a sample of rows."""

    profile: ReferenceProfile
    sample: pd.DataFrame
    run_id: str
    calibration: Calibration | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        """A classifier's class labels (as text), from its probability columns; empty for a regression."""
        return tuple(c[len(PROBABILITY) :] for c in self.profile.columns if c.startswith(PROBABILITY))

    @property
    def output_columns(self) -> list[str]:
        return [PREDICTION, *probability_columns(self.classes)]


def build_reference(
    frame: pd.DataFrame,
    features: list[str],
    outputs: Outputs,
    categorical: list[str] | tuple[str, ...] = (),
    sample_rows: int = SAMPLE_ROWS,
    seed: int = 0,
) -> tuple[ReferenceProfile, pd.DataFrame]:
    """Profile of features and outputs over all of ``frame``, and a uniform sample of its rows."""
    produced = outputs.columns()
    table = frame.assign(**produced)
    classifier = outputs.probabilities is not None
    profile = ReferenceProfile.from_frame(
        table, [*features, *produced], categorical=[*categorical, *([PREDICTION] if classifier else [])]
    )
    sample = table.sample(n=min(sample_rows, len(table)), random_state=seed) if len(table) else table
    return profile, sample.reset_index(drop=True)


def log_reference(
    frame: pd.DataFrame,
    features: list[str],
    outputs: Outputs,
    categorical: list[str] | tuple[str, ...] = (),
    calibration: Calibration | None = None,
) -> None:
    """Write the reference artifacts into the active MLflow run."""
    profile, sample = build_reference(frame, features, outputs, categorical)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        (folder / PROFILE).write_text(profile.to_json())
        sample.to_parquet(folder / SAMPLE, index=False)
        if calibration is not None:
            (folder / CALIBRATION).write_text(calibration.to_json())
        mlflow.log_artifacts(str(folder), ARTIFACT_DIR)


def load_reference(tracking_uri: str, model_name: str, version: str) -> Reference:
    """The reference stored by the training run of ``model_name`` version ``version``.

    Raises:
        MissingReferenceError: The run has no ``reference/`` artifacts.
    """
    tracker = client(tracking_uri)
    run_id = tracker.get_model_version(model_name, version).run_id
    if not run_id:
        raise MissingReferenceError(f"{model_name} version {version} has no training run to read a reference from")
    names = {Path(item.path).name for item in tracker.list_artifacts(run_id, ARTIFACT_DIR)}
    if not {PROFILE, SAMPLE} <= names:
        raise MissingReferenceError(
            f"{model_name} version {version} (run {run_id}) stored no training reference under {ARTIFACT_DIR}/; "
            "it was trained before monitoring existed: retrain it to monitor it"
        )
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(tracker.download_artifacts(run_id, ARTIFACT_DIR, scratch))
        profile = ReferenceProfile.from_json((folder / PROFILE).read_text())
        sample = pd.read_parquet(folder / SAMPLE)
        calibrated = folder / CALIBRATION
        calibration = Calibration.from_json(calibrated.read_text()) if calibrated.is_file() else None
    return Reference(profile, sample, run_id, calibration)
