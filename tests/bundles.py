"""Serving bundles of every kind the export writes, trained on tables with row ids and ignored columns.

Each kind is a real spec (the shipped one or a copy with ids and ignored columns added), trained with
scikit-learn and exported by the same code as the training flow: an all-numeric regression on one
matrix (with and without ids), a typed regression (categories, gaps), a binary classifier with text
labels and a multiclass classifier with integer labels and two id columns (one text, one integer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops.spec import ModelSpec, load_spec
from tests.conftest import SHIPPED_SPECS, wine_frame, wine_sections, write_spec

ROWS = 12  # whole rows a client sends per kind


@dataclass(frozen=True)
class Kind:
    """A bundle, the scikit-learn model it was exported from, its spec, and whole rows as a client holds them
    (ids, features and ignored columns; no target)."""

    name: str
    bundle: Path
    model: Any
    spec: ModelSpec
    rows: pd.DataFrame

    @property
    def classifier(self) -> bool:
        return self.spec.task.is_classification

    def predictions(self, rows: pd.DataFrame | None = None) -> list[Any]:
        """The scikit-learn model's answers for ``rows`` (default: all of ``self.rows``): labels or values."""
        from tasks.features import typed_features

        typed = typed_features(self.rows if rows is None else rows, self.spec)
        return np.asarray(self.model.predict(typed)).reshape(-1).tolist()

    def probabilities(self, rows: pd.DataFrame | None = None) -> np.ndarray:
        from tasks.features import typed_features

        return np.asarray(self.model.predict_proba(typed_features(self.rows if rows is None else rows, self.spec)))


def spec_bundle(directory: Path, spec: ModelSpec, frame: pd.DataFrame, family: str, version: str = "1") -> Kind:
    """Train ``family`` on ``frame`` as the training flow does and write its bundle (with its known answer)."""
    from serving.bundle import write_bundle
    from tasks.export import bundle_metadata, known_answer
    from tasks.features import build_estimator
    from tasks.onnx_convert import to_onnx
    from tasks.train import TrainingSet

    data = TrainingSet(frame, spec)
    x_train, y_train, x_holdout, _ = data.split()
    model = build_estimator(spec, family).fit(x_train, y_train)
    converted = to_onnx(model, data.input_columns)
    onnx_bytes = converted.model.SerializeToString()
    classifier = spec.task.is_classification
    classes = tuple(model.classes_.tolist()) if classifier else ()
    example = known_answer(model, x_holdout, tolerance=1e-6, classifier=classifier)
    metadata = bundle_metadata(data, converted, onnx_bytes, family, classes, version=version, example=example)
    bundle = write_bundle(directory / spec.name, onnx_bytes, metadata)
    gaps = frame[frame.isna().any(axis=1)].head(4)
    rows = pd.concat([frame.head(ROWS - len(gaps)), gaps]).drop(columns=[spec.target.column]).reset_index(drop=True)
    return Kind(spec.name, bundle, model, spec, rows)


def clinic_frame() -> pd.DataFrame:
    """The diabetes table (all numbers) with an integer visit id and a free-text comment."""
    from tasks.sample_data import diabetes_frame

    frame = diabetes_frame()
    frame.insert(0, "visit", np.arange(1001, 1001 + len(frame)))
    frame["comment"] = np.where(np.arange(len(frame)) % 3 == 0, "fasting", "after lunch")
    return frame


def cellar_frame() -> pd.DataFrame:
    """scikit-learn's wine table (a string column, gaps) with integer labels, a text bottle id, an integer lot
    number and a note to ignore."""
    from sklearn.datasets import load_wine

    frame = wine_frame()
    frame["cultivar"] = load_wine().target
    frame.insert(0, "bottle", [f"B{index:04d}" for index in range(len(frame))])
    frame.insert(1, "lot", np.arange(len(frame)) // 10 + 7)
    frame["cellar_note"] = np.where(np.arange(len(frame)) % 2 == 0, "north wall", "")
    return frame


def every_kind(directory: Path) -> dict[str, Kind]:
    """One bundle of each kind, written under ``directory``."""
    from tasks.sample_data import diabetes_frame, progression_frame, tumours_frame

    models = directory / "models"
    clinic = write_spec(models, "clinic", "diabetes", ids=["visit"], ignore=["comment"])
    cellar_sections = wine_sections() | {"target": {"column": "cultivar", "classes": [0, 1, 2]}}
    cellar = write_spec(models, "cellar", **cellar_sections, ids=["bottle", "lot"], ignore=["cellar_note"])
    progression = write_spec(models, "progression", "progression", training={"families": ["ridge"], "seed": 42})
    kinds = [
        spec_bundle(directory, load_spec("diabetes", SHIPPED_SPECS), diabetes_frame(), "ridge"),
        spec_bundle(directory, load_spec(str(clinic), models), clinic_frame(), "ridge"),
        spec_bundle(directory, load_spec(str(progression), models), progression_frame(), "ridge"),
        spec_bundle(directory, load_spec("tumours", SHIPPED_SPECS), tumours_frame(), "logistic_regression"),
        spec_bundle(directory, load_spec(str(cellar), models), cellar_frame(), "logistic_regression"),
    ]
    return {kind.name: kind for kind in kinds}
