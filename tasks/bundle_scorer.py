"""A serving bundle scored like a scikit-learn model: ``predict`` / ``predict_proba`` on typed features.

What the loop compares, evaluates and monitors offline is what it serves: the champion comparison scores
the champion from its ONNX bundle (checked against the sha256 its registration recorded, so no file of the
registry is unpickled), and a model registered as a bare ONNX file is measured the same way.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from serving.bundle import ModelMetadata, read_bundle
from serving.model import open_session
from tasks.onnx_convert import LABEL, MATRIX_INPUT, PROBABILITIES


class BundleScorer:
    """predict / predict_proba / classes_ over an ONNX graph and its bundle metadata.

    Args:
        onnx_bytes: The graph.
        metadata: Its bundle metadata (inputs per column, or one float64 ``input`` matrix; outputs).
    """

    def __init__(self, onnx_bytes: bytes, metadata: ModelMetadata) -> None:
        self.metadata = metadata
        self._session = open_session(onnx_bytes)
        self.classes_ = np.asarray(metadata.classes) if metadata.classes else None

    @classmethod
    def from_registry(cls, tracking_uri: str, model_uri: str) -> BundleScorer:
        """The bundle of a registered version (``models:/<name>/<version>``), its sha256 checked.

        Raises:
            BundleNotFound: No such version, or it has no ONNX export.
            BundleError: The file does not match the sha256 its registration recorded.
        """
        from tasks.serving_bundle import fetch_bundle

        with tempfile.TemporaryDirectory() as scratch:
            fetch_bundle(tracking_uri, model_uri, Path(scratch))
            model_file, metadata = read_bundle(Path(scratch))
            return cls(model_file.read_bytes(), metadata)

    def _feeds(self, features: pd.DataFrame) -> dict[str, np.ndarray]:
        meta = self.metadata
        if meta.input_name == MATRIX_INPUT:
            return {MATRIX_INPUT: features[list(meta.features)].to_numpy(dtype=np.float64)}
        return {
            item["input"]: features[item["column"]]
            .to_numpy(dtype=np.float64 if item["type"] == "double" else object)
            .reshape(-1, 1)
            for item in meta.inputs
        }

    def _run(self, features: pd.DataFrame) -> dict[str, np.ndarray]:
        names = list(self.metadata.outputs)
        return dict(zip(names, self._session.run(names, self._feeds(features)), strict=True))

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        """A regression's values, or a classifier's labels, one per row of typed ``features``."""
        if self.classes_ is None:
            return np.asarray(self._run(features)[self.metadata.outputs[0]], dtype=np.float64).ravel()
        return np.asarray(self._run(features)[LABEL]).ravel()

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        """A classifier's probabilities per class, in ``classes_`` order."""
        if self.classes_ is None:
            raise AttributeError("a regression bundle has no probabilities")
        return np.asarray(self._run(features)[PROBABILITIES], dtype=np.float64)
