"""A serving bundle: a directory with ``model.onnx`` and ``metadata.json`` that describes it.

The export task writes bundles, the server reads them, and the image build bakes them in.
Only the standard library is used here, so every side can import it cheaply.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1
# A missing category reaches the model as this string (string tensors hold no nulls); training and
# every client of a bundle fill it the same way.
MISSING_CATEGORY = "__missing__"


class BundleError(ValueError):
    """A bundle is missing, malformed or does not match its recorded checksum."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


Value = float | str | None


@dataclass(frozen=True)
class Example:
    """A known request and the trained model's answer to it, checked against a fresh deployment.

    Attributes:
        inputs: Rows of feature values, in the order of ``ModelMetadata.features`` (numbers; for typed
            models also category strings, and None where a value is missing).
        predictions: The scikit-learn model's prediction for each row (not the ONNX model's): a number,
            or a classifier's label.
        tolerance: Largest allowed absolute difference of a number or of a probability.
        probabilities: A classifier's class probabilities per row, in the order of ``ModelMetadata.classes``.
    """

    inputs: tuple[tuple[Value, ...], ...]
    predictions: tuple[float | str, ...]
    tolerance: float
    probabilities: tuple[tuple[float, ...], ...] = ()

    @classmethod
    def from_dict(cls, raw: Any, source: str) -> Example:
        try:
            inputs = tuple(tuple(_value(value) for value in row) for row in raw["inputs"])
            predictions = tuple(p if isinstance(p, str) else float(p) for p in raw["predictions"])
            tolerance = float(raw["tolerance"])
            probabilities = tuple(tuple(float(p) for p in row) for row in raw.get("probabilities") or ())
        except (KeyError, TypeError, ValueError) as error:
            raise BundleError(f"{source}: example must hold inputs, predictions and tolerance: {error}") from error
        if not inputs or len(inputs) != len(predictions):
            raise BundleError(f"{source}: example needs one prediction per input row")
        if probabilities and len(probabilities) != len(predictions):
            raise BundleError(f"{source}: example needs probabilities for every row or none")
        return cls(inputs, predictions, tolerance, probabilities)


def _value(value: Any) -> Value:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise ValueError(f"an example value is a boolean ({value}); booleans are stored as 1.0/0.0")
    return float(value)


@dataclass(frozen=True)
class ModelMetadata:
    """What the server needs to know about the model it serves.

    Attributes:
        name: Registered model name (the name clients address).
        version: Registered model version, or ``unregistered`` before registration.
        features: Input feature names, in the order of the model's input columns.
        input_name: Name of the ONNX graph's single input (a float64 matrix ``[rows, len(features)]``).
        output_name: Name of the ONNX graph's output (one prediction per row).
        sha256: Checksum of ``model.onnx``; the server refuses to start if it differs.
        run_id: The MLflow run that trained the model.
        family: Model family (ridge, random_forest, ...).
        example: A known request and answer, for smoke tests of a deployment.
        task: ``regression``, ``binary`` or ``multiclass``.
        inputs: Per feature: ``column``, graph ``input``, tensor ``type`` (double/string), ``kind``,
            ``nullable`` and, for categories, the ``fill`` string a missing value becomes.
        outputs: The graph's outputs: ``variable``, or ``label`` and ``probabilities``.
        classes: Class labels in the order of ``probabilities`` (classifiers).
        ids: The spec's row id columns: a request may carry them; they are never fed to the model, but answered
            beside each prediction and collected with the request's rows.
        ignore: The spec's ignored columns: a request may carry them; they are dropped, as training drops them.
        extra: Anything else worth carrying (parity, git commit); not read by the server.
    """

    name: str
    version: str
    features: tuple[str, ...]
    input_name: str
    output_name: str
    sha256: str
    run_id: str = ""
    family: str = ""
    example: Example | None = None
    task: str = "regression"
    inputs: tuple[dict[str, Any], ...] = ()
    outputs: tuple[str, ...] = ("variable",)
    classes: tuple[Any, ...] = ()
    ids: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def numeric_matrix(self) -> bool:
        """Whether the graph takes one float64 matrix of every feature (today's serving path)."""
        return bool(self.input_name) and all(spec.get("type", "double") == "double" for spec in self.inputs)

    def to_json(self) -> str:
        fields = {**asdict(self), "features": list(self.features), "outputs": list(self.outputs)}
        fields |= {"ids": list(self.ids), "ignore": list(self.ignore)}
        return json.dumps({"format": FORMAT_VERSION, **fields}, indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = METADATA_FILE) -> ModelMetadata:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as error:
            raise BundleError(f"{source} is not valid JSON: {error}") from error
        if not isinstance(raw, dict):
            raise BundleError(f"{source} must hold a JSON object")
        if raw.get("format") != FORMAT_VERSION:
            raise BundleError(f"{source} has format {raw.get('format')!r}; this server reads format {FORMAT_VERSION}")
        missing = [
            key for key in ("name", "version", "features", "input_name", "output_name", "sha256") if key not in raw
        ]
        if missing:
            raise BundleError(f"{source} lacks {', '.join(missing)}")
        features = raw["features"]
        if not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features):
            raise BundleError(f"{source}: features must be a non-empty list of names")
        ids, ignore = _names(raw, "ids", source), _names(raw, "ignore", source)  # absent in older bundles
        clash = sorted(set(features) & set(ids + ignore) | set(ids) & set(ignore))
        if clash:
            raise BundleError(f"{source}: {', '.join(clash)} named twice among features, ids and ignore")
        return cls(
            name=str(raw["name"]),
            version=str(raw["version"]),
            features=tuple(features),
            input_name=str(raw["input_name"]),
            output_name=str(raw["output_name"]),
            sha256=str(raw["sha256"]),
            run_id=str(raw.get("run_id", "")),
            family=str(raw.get("family", "")),
            example=None if raw.get("example") is None else Example.from_dict(raw["example"], f"{source}"),
            task=str(raw.get("task", "regression")),
            inputs=tuple(dict(item) for item in raw.get("inputs") or ()),
            outputs=tuple(str(item) for item in raw.get("outputs") or ("variable",)),
            classes=tuple(raw.get("classes") or ()),
            ids=ids,
            ignore=ignore,
            extra=dict(raw.get("extra") or {}),
        )


def _names(raw: dict[str, Any], key: str, source: str) -> tuple[str, ...]:
    names = raw.get(key) or []
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise BundleError(f"{source}: {key} must be a list of column names")
    return tuple(names)


def write_bundle(directory: Path, onnx_bytes: bytes, metadata: ModelMetadata) -> Path:
    """Write ``model.onnx`` and ``metadata.json`` into ``directory`` (created if needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MODEL_FILE).write_bytes(onnx_bytes)
    (directory / METADATA_FILE).write_text(metadata.to_json() + "\n")
    return directory


def read_bundle(directory: Path) -> tuple[Path, ModelMetadata]:
    """The model file and metadata of a bundle, checked against the recorded sha256.

    Raises:
        BundleError: A file is missing, the metadata is malformed, or the checksum differs.
    """
    model_file, metadata_file = directory / MODEL_FILE, directory / METADATA_FILE
    for path in (model_file, metadata_file):
        if not path.is_file():
            raise BundleError(f"{path} not found: a serving bundle holds {MODEL_FILE} and {METADATA_FILE}")
    metadata = ModelMetadata.from_json(metadata_file.read_text(), str(metadata_file))
    actual = file_sha256(model_file)
    if actual != metadata.sha256:
        raise BundleError(
            f"{model_file} has sha256 {actual}, but {metadata_file} records {metadata.sha256}: "
            "the model file was changed or swapped; refusing to serve it"
        )
    return model_file, metadata
