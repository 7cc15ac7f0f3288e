"""The served model: an onnxruntime session over a checked bundle, ready after a warm-up call."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from serving.bundle import BundleError, ModelMetadata, read_bundle


def open_session(model: str | bytes, threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime CPU session (from a path or the model's bytes) as the server runs it."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Spinning worker threads burn the core the event loop needs; a one-row model gains nothing from them.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def is_matrix_regression(meta: ModelMetadata) -> bool:
    """The fast path: a regression on one float64 matrix of every feature (micro-batched, collected as numbers)."""
    return (
        meta.task == "regression"
        and meta.numeric_matrix
        and not any(spec.get("nullable") or spec.get("kind") == "boolean" for spec in meta.inputs)
    )


class OnnxModel:
    """One ONNX model from a serving bundle.

    ``load()`` verifies the checksum, opens the session, checks the graph matches the metadata
    and runs one warm-up prediction; only then is ``ready`` true. A regression on one float64
    matrix is scored by ``predict()`` (a matrix in the metadata's feature order); every other
    model (typed columns, nulls, classifiers) by ``run()`` with the feeds of :mod:`serving.typed`.
    """

    def __init__(self, bundle_dir: Path, intra_op_threads: int = 1) -> None:
        self.bundle_dir = bundle_dir
        self.intra_op_threads = intra_op_threads
        self.ready = False
        self._session: ort.InferenceSession | None = None
        self._metadata: ModelMetadata | None = None
        # The warm-up call's answers by output name, as the server answers them (what its metadata declares).
        self.warm_outputs: dict[str, np.ndarray] = {}

    @property
    def metadata(self) -> ModelMetadata:
        if self._metadata is None:
            raise RuntimeError("model not loaded yet: call load() first")
        return self._metadata

    def load(self) -> OnnxModel:
        """Load and warm up.

        Raises:
            BundleError: Missing files, checksum mismatch, or a graph that does not match the metadata.
        """
        model_file, metadata = read_bundle(self.bundle_dir)
        try:
            session = open_session(str(model_file), self.intra_op_threads)
        except Exception as error:  # onnxruntime raises its own untyped errors
            raise BundleError(f"onnxruntime cannot load {model_file}: {error}") from error
        inputs = {node.name: node.type for node in session.get_inputs()}
        outputs = {node.name for node in session.get_outputs()}
        self._session, self._metadata = session, metadata
        if is_matrix_regression(metadata):
            if metadata.input_name not in inputs or len(inputs) != 1:
                raise BundleError(
                    f"{model_file} inputs are {sorted(inputs)}; metadata expects only {metadata.input_name!r}"
                )
            if inputs[metadata.input_name] != "tensor(double)":
                raise BundleError(f"{model_file} input {metadata.input_name!r} is {inputs[metadata.input_name]}")
            if metadata.output_name not in outputs:
                raise BundleError(f"{model_file} has no output {metadata.output_name!r}")
            warm = self.predict(np.zeros((1, len(metadata.features)), dtype=np.float64))
            self.warm_outputs = {metadata.output_name: warm}
        else:
            from serving.typed import TypedSchema

            schema = TypedSchema(metadata)
            wanted = {column.input: f"tensor({column.type})" for column in schema.columns}
            if wanted != inputs:
                raise BundleError(f"{model_file} inputs are {inputs}; its metadata describes {wanted}")
            missing = [name for name in metadata.outputs if name not in outputs]
            if missing:
                raise BundleError(f"{model_file} lacks the output(s) {', '.join(missing)} its metadata names")
            values = {column.name: [column.fill or "" if column.type == "string" else 0.0] for column in schema.columns}
            self.warm_outputs = self.run(schema.feeds(values, "warm-up"))
        self.ready = True
        return self

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output of the metadata (``label`` + ``probabilities``, or ``variable``) for typed feeds."""
        if self._session is None:
            raise RuntimeError("model not loaded yet: call load() first")
        names = list(self.metadata.outputs)
        return dict(zip(names, self._session.run(names, feeds), strict=True))

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """One prediction per row of a float64 ``[rows, features]`` matrix."""
        if self._session is None:
            raise RuntimeError("model not loaded yet: call load() first")
        meta = self.metadata
        output = self._session.run([meta.output_name], {meta.input_name: matrix})[0]
        return np.asarray(output, dtype=np.float64).reshape(-1)
