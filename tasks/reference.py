"""The training reference a model version is monitored against, stored with its MLflow run.

At training time (:func:`log_reference`, inside the candidate's run) two artifacts are written
under ``reference/``:

- ``profile.json``: a :class:`tasks.drift.ReferenceProfile` of every feature and of the model's
  predictions over the whole training set — what the fast drift decision needs, a few hundred kB;
- ``sample.parquet``: a uniform sample of training rows (features, target, prediction) — what
  the Evidently report and the live-input validation suite are built from.

The monitor reads them back for the champion's version (:func:`load_reference`), so a window is
never compared with data the serving model was not trained on.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from tasks.drift import ReferenceProfile
from tasks.tracking import client

ARTIFACT_DIR = "reference"
PROFILE = "profile.json"
SAMPLE = "sample.parquet"
PREDICTION = "prediction"
SAMPLE_ROWS = 5000


class MissingReferenceError(RuntimeError):
    """The model version's training run stored no reference (trained before references existed)."""


@dataclass(frozen=True)
class Reference:
    """A version's training reference: profile of features + prediction, and a sample of rows."""

    profile: ReferenceProfile
    sample: pd.DataFrame
    run_id: str


def build_reference(
    frame: pd.DataFrame, features: list[str], predictions: np.ndarray, sample_rows: int = SAMPLE_ROWS, seed: int = 0
) -> tuple[ReferenceProfile, pd.DataFrame]:
    """Profile of features and predictions over all of ``frame``, and a uniform sample of its rows."""
    table = frame.assign(**{PREDICTION: np.asarray(predictions, dtype=float)})
    profile = ReferenceProfile.from_frame(table, [*features, PREDICTION])
    sample = table.sample(n=min(sample_rows, len(table)), random_state=seed) if len(table) else table
    return profile, sample.reset_index(drop=True)


def log_reference(frame: pd.DataFrame, features: list[str], predictions: np.ndarray) -> None:
    """Write the reference artifacts into the active MLflow run."""
    profile, sample = build_reference(frame, features, predictions)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        (folder / PROFILE).write_text(profile.to_json())
        sample.to_parquet(folder / SAMPLE, index=False)
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
    return Reference(profile, sample, run_id)
