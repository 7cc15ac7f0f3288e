"""Models trained elsewhere: read a source, check it against the model's spec, make its ONNX graph.

A source is one of:

- an ONNX file (``.onnx``) from any framework: one float ``[rows, features]`` matrix of the spec's numeric
  features in spec order, or one input per feature named as the spec names it; a regression's value, or a
  classifier's label and ``[rows, classes]`` probabilities (no ZipMap);
- a scikit-learn / XGBoost / LightGBM / CatBoost estimator or pipeline saved with skops (``.skops``), or with
  joblib or pickle (``.joblib``, ``.pkl``: loaded only where ``trust_pickles`` is given, which ``mlops register``
  does on the user's machine after saying that it runs the file's code);
- an MLflow model: ``runs:/…``, ``models:/…`` (on this tracking server or another one), or a folder or
  ``s3://`` path holding an ``MLmodel`` file, in the sklearn (skops), xgboost, catboost, lightgbm or onnx
  flavour (pickled flavours as above).

The spec is the contract: a Python model must take the spec's columns (typed as training types them) and
answer its task (a value, or labels and probabilities of the spec's classes); an ONNX graph must take and give
the same. Anything else is refused with one line naming the column or output that does not fit.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import yaml
from onnx import TensorProto, helper

from mlops.spec import ModelSpec
from tasks.onnx_convert import (
    LABEL,
    MATRIX_INPUT,
    OUTPUT_NAME,
    PROBABILITIES,
    Converted,
    InputColumn,
    double_outputs,
    first_line,
    graph_name,
)

ONNX_SUFFIXES = (".onnx",)
SKOPS_SUFFIXES = (".skops",)
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
MLFLOW_SCHEMES = ("runs:/", "models:/", "s3://", "gs://", "file:")
# What a skops file may hold: the modules of the estimators we export, and the containers they use.
TRUSTED_MODULES = ("sklearn", "numpy", "scipy", "xgboost", "lightgbm", "catboost", "tasks.boosting", "collections")
NUMERIC_ELEMENTS = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64, TensorProto.INT64: np.int64}


_TRUST_PICKLES: ContextVar[bool] = ContextVar("trust_pickles", default=False)


@contextmanager
def trusting_pickles() -> Iterator[None]:
    """Within: pickled sources are loaded (``mlops register`` on the user's machine, after its warning). A flow
    run on a worker never is within."""
    token = _TRUST_PICKLES.set(True)
    try:
        yield
    finally:
        _TRUST_PICKLES.reset(token)


def pickles_trusted() -> bool:
    """Whether this call is within :func:`trusting_pickles`."""
    return _TRUST_PICKLES.get()


class SourceError(ValueError):
    """A source cannot be registered: it does not load, or it does not fit the spec (one line says which)."""


class PickleSource(SourceError):
    """The source is a pickle, which only ``mlops register`` loads (on the user's machine, with a warning)."""


@dataclass(frozen=True)
class Source:
    """A loaded source.

    Attributes:
        uri: The source as given.
        kind: ``onnx``, ``skops``, ``pickle`` or ``mlflow``.
        sha256: Of the file, or of the MLflow model folder's files (sorted by path).
        estimator: The Python model, or None for an ONNX graph.
        graph: The ONNX graph, or None for a Python model.
        flavour: What it was read as (``onnx``, ``skops``, ``joblib``, ``mlflow.sklearn``, ``mlflow.xgboost``...).
    """

    uri: str
    kind: str
    sha256: str
    estimator: Any = None
    graph: onnx.ModelProto | None = None
    flavour: str = ""

    @property
    def family(self) -> str:
        """What the model is, for the run and the version (``XGBRegressor``, ``onnx:<producer>``)."""
        if self.graph is not None:
            return f"onnx:{self.graph.producer_name or 'unknown'}"
        from tasks.boosting import EncodedLabels, final_estimator

        last = final_estimator(self.estimator)
        return type(last.estimator if isinstance(last, EncodedLabels) else last).__name__


def source_kind(uri: str) -> str:
    """Which kind of source ``uri`` names.

    Raises:
        SourceError: Nothing of a known kind.
    """
    if uri.startswith(MLFLOW_SCHEMES) or (Path(uri) / "MLmodel").is_file():
        return "mlflow"
    suffix = Path(uri).suffix.lower()
    for kind, suffixes in (("onnx", ONNX_SUFFIXES), ("skops", SKOPS_SUFFIXES), ("pickle", PICKLE_SUFFIXES)):
        if suffix in suffixes:
            return kind
    raise SourceError(
        f"{uri}: not a model source; give an .onnx, .skops, .joblib or .pkl file, an MLflow model URI "
        "(runs:/..., models:/...) or a folder holding an MLmodel file"
    )


def digest(path: Path) -> str:
    """sha256 of a file, or of a folder's files (paths and bytes, sorted by path)."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    total = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        total.update(str(item.relative_to(path)).encode() + b"\0" + item.read_bytes())
    return total.hexdigest()


def load_skops(path: Path) -> Any:
    """A skops file whose types all come from the estimators' libraries (nothing else is constructed).

    Raises:
        SourceError: It is not a skops file, or it holds other types.
    """
    import skops.io

    try:
        untrusted = skops.io.get_untrusted_types(file=path)
    except Exception as error:  # skops raises zipfile/json/KeyError alike for a file that is not its own
        raise SourceError(f"{path}: not a skops file: {first_line(error)}") from error
    foreign = sorted(name for name in untrusted if not name.startswith(TRUSTED_MODULES))
    if foreign:
        raise SourceError(
            f"{path} holds types outside scikit-learn and the boosting libraries: {foreign[:5]}; "
            "register the estimator alone"
        )
    return skops.io.load(path, trusted=untrusted)


def _load_pickle(path: Path) -> Any:
    import joblib

    try:
        return joblib.load(path)
    except Exception as error:  # unpickling raises anything the file's code raises
        raise SourceError(f"{path} does not load: {type(error).__name__}: {first_line(error)}") from error


def _load_onnx(path: Path) -> onnx.ModelProto:
    try:
        graph = onnx.load(str(path))
        onnx.checker.check_model(graph)
    except Exception as error:  # onnx raises DecodeError, ValidationError, OSError
        raise SourceError(f"{path} is not a valid ONNX model: {first_line(error)}") from error
    return graph


def _artifact_location(uri: str, tracking_uri: str | None) -> str:
    """Where an MLflow model URI's files are. MLflow 3 keeps a logged model apart from its run's artifacts and
    resolves ``runs:/`` and ``models:/`` through its global client; here they are resolved on ``tracking_uri``
    (this server or another) without touching that client."""
    from mlflow import MlflowClient

    tracker = MlflowClient(tracking_uri)
    if uri.startswith("runs:/"):
        run_id, _, path = uri.removeprefix("runs:/").partition("/")
        outputs = tracker.get_run(run_id).outputs
        for output in outputs.model_outputs if outputs else []:
            model = tracker.get_logged_model(output.model_id)
            if model.name == path.strip("/"):
                return str(model.artifact_location)
        return uri  # a folder of the run's own artifacts
    if uri.startswith("models:/"):
        reference = uri.removeprefix("models:/")
        if not reference.startswith("m-"):
            name, _, rest = reference.partition("/")
            name, _, alias = name.partition("@")
            version = (
                tracker.get_model_version_by_alias(name, alias) if alias else tracker.get_model_version(name, rest)
            )
            if not str(version.source).startswith("models:/m-"):
                return str(version.source)
            reference = str(version.source).removeprefix("models:/")
        return str(tracker.get_logged_model(reference).artifact_location)
    return uri


def _download(uri: str, tracking_uri: str | None, dest: Path) -> Path:
    """The MLflow model folder of ``uri`` (``runs:/`` and ``models:/`` resolved on ``tracking_uri``)."""
    if Path(uri).is_dir():
        return Path(uri)
    import mlflow.artifacts

    where = f" on {tracking_uri}" if tracking_uri else ""
    try:  # the URIs are passed, never set globally: the flow's own registry stays where it is
        location = _artifact_location(uri, tracking_uri)
        found = mlflow.artifacts.download_artifacts(
            artifact_uri=location, dst_path=str(dest), tracking_uri=tracking_uri, registry_uri=tracking_uri
        )
    except Exception as error:  # MlflowException, OSError, botocore errors
        raise SourceError(f"MLflow model {uri}{where} cannot be downloaded: {first_line(error)}") from error
    return Path(found)


def _load_mlflow(uri: str, tracking_uri: str | None, trust_pickles: bool) -> Source:
    with tempfile.TemporaryDirectory() as scratch:
        folder = _download(uri, tracking_uri, Path(scratch))
        if not (folder / "MLmodel").is_file():
            raise SourceError(f"{uri} holds no MLmodel file: not an MLflow model")
        flavors = (yaml.safe_load((folder / "MLmodel").read_text()) or {}).get("flavors", {})
        sha = digest(folder)
        if "onnx" in flavors:
            return Source(uri, "mlflow", sha, graph=_load_onnx(folder / flavors["onnx"]["data"]), flavour="mlflow.onnx")
        for flavour in ("sklearn", "xgboost", "catboost", "lightgbm"):
            if flavour in flavors:
                estimator = _flavour_model(uri, folder, flavour, flavors[flavour], trust_pickles)
                return Source(uri, "mlflow", sha, estimator, flavour=f"mlflow.{flavour}")
    raise SourceError(
        f"{uri} is an MLflow model in the flavour(s) {sorted(flavors)}: register a scikit-learn, XGBoost, "
        "LightGBM, CatBoost or ONNX model"
    )


def _flavour_model(uri: str, folder: Path, flavour: str, conf: dict[str, Any], trust_pickles: bool) -> Any:
    """The estimator of one MLflow flavour: skops files through our own allow-list (not the types the MLmodel file
    says to trust), pickles only when trusted, native formats (XGBoost JSON/UBJ, CatBoost .cbm) by the flavour."""
    data = folder / str(conf.get("pickled_model") or conf.get("data") or "")
    if conf.get("serialization_format") == "skops" or data.suffix == ".skops":
        estimator = load_skops(data)
    elif conf.get("serialization_format") in ("pickle", "cloudpickle") or data.suffix in PICKLE_SUFFIXES:
        estimator = _trusted(uri, trust_pickles, partial(_load_pickle, data))
    else:
        import importlib

        estimator = importlib.import_module(f"mlflow.{flavour}").load_model(str(folder))
    if not hasattr(estimator, "get_params"):
        raise SourceError(
            f"{uri} is a bare {type(estimator).__name__}: log the scikit-learn API model "
            f"(XGBRegressor, LGBMClassifier, CatBoostClassifier...) instead"
        )
    return estimator


def _trusted(uri: str, trust_pickles: bool, load: Any) -> Any:
    if not trust_pickles:
        raise PickleSource(
            f"{uri} is a pickle, and loading one runs its code: register it with `mlops register` on your own "
            "machine (it loads pickles after a warning), or save the model with skops or as ONNX"
        )
    print(
        f"warning: {uri} is a pickle: loading it runs the code it holds (register only files you trust)",
        file=sys.stderr,
    )
    return load()


def load_source(uri: str, source_tracking_uri: str | None = None, trust_pickles: bool = False) -> Source:
    """Load a source (see the module's docstring).

    Raises:
        SourceError: It does not exist, does not load, or is of no known kind.
        PickleSource: It is a pickle and ``trust_pickles`` is false.
    """
    kind = source_kind(uri)
    if kind == "mlflow":
        return _load_mlflow(uri, source_tracking_uri, trust_pickles)
    path = Path(uri)
    if not path.is_file():
        raise SourceError(f"{uri}: no such file")
    sha = digest(path)
    if kind == "onnx":
        return Source(uri, kind, sha, graph=_load_onnx(path), flavour="onnx")
    if kind == "skops":
        return Source(uri, kind, sha, load_skops(path), flavour="skops")
    return Source(uri, kind, sha, _trusted(uri, trust_pickles, lambda: _load_pickle(path)), flavour="joblib")


def check_estimator(model: Any, spec: ModelSpec, rows: pd.DataFrame) -> None:
    """A Python model fits the spec: an estimator of the spec's task, taking its columns, answering its classes.

    Args:
        rows: A few rows of the spec's features, typed as training types them.

    Raises:
        SourceError: What does not fit (the column, the task or the classes).
    """
    name = type(model).__name__
    if not callable(getattr(model, "predict", None)):
        raise SourceError(f"the source holds a {name}, not a fitted estimator (it has no predict)")
    classifier = callable(getattr(model, "predict_proba", None)) and hasattr(model, "classes_")
    if spec.task.is_classification and not classifier:
        raise SourceError(f"{name} answers no class probabilities; the spec's task is {spec.task.value}")
    if not spec.task.is_classification and classifier:
        classes = [str(label) for label in np.asarray(model.classes_).tolist()]
        raise SourceError(f"{name} is a classifier (classes {classes}); the spec's task is regression")
    names = [str(column) for column in getattr(model, "feature_names_in_", [])]
    if names:
        unknown = [column for column in names if column not in spec.feature_names]
        missing = [column for column in spec.feature_names if column not in names]
        if unknown or missing:
            raise SourceError(
                f"{name} takes the columns {names}: "
                + "; ".join(
                    part
                    for part in (
                        f"{unknown} are not the spec's features" if unknown else "",
                        f"the spec's {missing} are missing" if missing else "",
                    )
                    if part
                )
            )
    elif getattr(model, "n_features_in_", len(spec.feature_names)) not in (len(spec.feature_names), 0):
        raise SourceError(f"{name} takes {model.n_features_in_} features; the spec names {len(spec.feature_names)}")
    if classifier:
        _check_classes([*np.asarray(model.classes_).tolist()], spec, name)
    try:
        answers = np.asarray(model.predict(rows))
    except Exception as error:  # whatever the model's own code raises on the spec's columns
        raise SourceError(f"{name} cannot score the spec's typed columns: {first_line(error)}") from error
    if len(answers) != len(rows):
        raise SourceError(f"{name} answered {len(answers)} predictions for {len(rows)} rows")


def _check_classes(classes: list[Any], spec: ModelSpec, name: str) -> None:
    expected = spec.target.classes
    if expected is not None and sorted(map(str, classes)) != sorted(map(str, expected)):
        raise SourceError(f"{name} answers the classes {classes}; the spec's are {list(expected)}")
    if spec.task.value == "binary" and len(classes) != 2:
        raise SourceError(f"{name} answers {len(classes)} classes; a binary task has 2")


def _elem(value: onnx.ValueInfoProto) -> int:
    return int(value.type.tensor_type.elem_type) if value.type.HasField("tensor_type") else -1


def _rename_input(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
    for output in graph.output:
        if output.name == old:
            raise SourceError(f"the graph's input {old!r} is also an output")


def adapt_graph(model: onnx.ModelProto, spec: ModelSpec) -> Converted:
    """A foreign graph with the inputs and outputs the server feeds and reads (casts and renames added).

    Raises:
        SourceError: Its inputs are neither one matrix of the spec's numeric features nor one input per feature,
            or its outputs are not the spec's task's.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    initializers = {item.name for item in graph.initializer}
    inputs = [item for item in graph.input if item.name not in initializers]
    columns = _adapt_inputs(graph, inputs, spec)
    _sort_nodes(graph)
    matrix = columns[0].name == MATRIX_INPUT
    outputs = _adapt_outputs(graph, spec)
    converted = double_outputs(model, outputs)
    return Converted(converted, tuple(columns), matrix, outputs)


def _adapt_inputs(graph: onnx.GraphProto, inputs: list[onnx.ValueInfoProto], spec: ModelSpec) -> list[InputColumn]:
    features = spec.feature_names
    by_name = {item.name: item for item in inputs}
    if len(inputs) == 1 and inputs[0].name not in features and inputs[0].name not in map(graph_name, features):
        [single] = inputs
        dims = [d.dim_value or None for d in single.type.tensor_type.shape.dim]
        if spec.categorical_features:
            raise SourceError(
                f"the graph takes one input {single.name!r}; the spec's categories {spec.categorical_features} "
                "need one string input each (named as the spec names them)"
            )
        if len(dims) != 2 or dims[1] not in (None, len(features)) or _elem(single) not in NUMERIC_ELEMENTS:
            raise SourceError(
                f"the graph's input {single.name!r} is {onnx.helper.printable_type(single.type)}; the spec needs "
                f"a float matrix [rows, {len(features)}] of {features} in that order, or one input per feature"
            )
        _cast_input(graph, single, MATRIX_INPUT, [None, len(features)], TensorProto.DOUBLE)
        return [InputColumn(feature, MATRIX_INPUT, "double") for feature in features]
    columns = []
    for feature in spec.features:
        found = by_name.get(feature.name) or by_name.get(graph_name(feature.name))
        if found is None:
            raise SourceError(
                f"the graph's inputs {sorted(by_name)} lack the spec's feature {feature.name!r} (one input per "
                "feature, named as the spec names it, or one matrix of every feature)"
            )
        wanted = TensorProto.STRING if feature.is_categorical else TensorProto.DOUBLE
        if feature.is_categorical and _elem(found) != TensorProto.STRING:
            raise SourceError(
                f"the graph's input {found.name!r} is not a string tensor; {feature.name!r} is a category"
            )
        if not feature.is_categorical and _elem(found) not in NUMERIC_ELEMENTS:
            raise SourceError(f"the graph's input {found.name!r} is no number tensor; {feature.name!r} is a number")
        columns.append(
            InputColumn(feature.name, graph_name(feature.name), "string" if feature.is_categorical else "double")
        )
        _cast_input(graph, found, graph_name(feature.name), [None, 1], wanted)
    extra = sorted(set(by_name) - {c.name for c in columns} - set(spec.feature_names))
    if extra:
        raise SourceError(f"the graph also takes the inputs {extra}, which the spec does not name")
    return columns


def _cast_input(graph: onnx.GraphProto, original: onnx.ValueInfoProto, name: str, dims: list[Any], elem: int) -> None:
    """Replace ``original`` by an input ``name`` of ``elem`` and shape ``dims``, cast and reshaped to what the
    graph took (the nodes are put in order afterwards)."""
    inner = f"{original.name}__given"
    _rename_input(graph, original.name, inner)
    graph.input.remove(original)
    graph.input.append(helper.make_tensor_value_info(name, elem, dims))
    source = name
    if _elem(original) != elem:
        graph.node.append(helper.make_node("Cast", [source], [f"{inner}_cast"], to=_elem(original)))
        source = f"{inner}_cast"
    if len(original.type.tensor_type.shape.dim) == 1:  # a column as [rows]: the server sends [rows, 1]
        graph.initializer.append(helper.make_tensor(f"{inner}_shape", TensorProto.INT64, [1], [-1]))
        graph.node.append(helper.make_node("Reshape", [source, f"{inner}_shape"], [f"{inner}_flat"]))
        source = f"{inner}_flat"
    graph.node.append(helper.make_node("Identity", [source], [inner]))


def _sort_nodes(graph: onnx.GraphProto) -> None:
    """Nodes in an order where each input is made before it is used (the inserted casts first)."""
    available = {item.name for item in graph.input} | {item.name for item in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [node for node in pending if all(name in available for name in node.input)]
        if not ready:  # an input made by no node: leave the rest as they were (the checker names it)
            ordered.extend(pending)
            break
        for node in ready:
            ordered.append(node)
            available.update(node.output)
            pending.remove(node)
    del graph.node[:]
    graph.node.extend(ordered)


def _adapt_outputs(graph: onnx.GraphProto, spec: ModelSpec) -> tuple[str, ...]:
    outputs = list(graph.output)
    kinds = [(item, _elem(item), len(item.type.tensor_type.shape.dim)) for item in outputs]
    if any(item.type.HasField("sequence_type") or item.type.HasField("map_type") for item in outputs):
        raise SourceError(
            "the graph answers probabilities as a ZipMap (a sequence of maps): convert it without one "
            "(skl2onnx: options={id(model): {'zipmap': False}})"
        )
    if not spec.task.is_classification:
        numbers = [item for item, elem, _ in kinds if elem in (TensorProto.FLOAT, TensorProto.DOUBLE)]
        if not numbers:
            raise SourceError(
                f"the graph's outputs {[o.name for o in outputs]} hold no number: a regression answers one"
            )
        if len([item for item, elem, rank in kinds if rank == 2 and elem in NUMERIC_ELEMENTS]) > 1 or any(
            elem in (TensorProto.STRING, TensorProto.INT64) for _, elem, _ in kinds
        ):
            raise SourceError(
                f"the graph answers {[o.name for o in outputs]}, a classifier's outputs; the spec's task is regression"
            )
        _keep_outputs(graph, [numbers[0]])
        return (OUTPUT_NAME,)
    labels = [item for item, elem, _ in kinds if elem in (TensorProto.STRING, TensorProto.INT64)]
    probabilities = [
        item for item, elem, rank in kinds if elem in (TensorProto.FLOAT, TensorProto.DOUBLE) and rank == 2
    ]
    if not labels or not probabilities:
        raise SourceError(
            f"the graph answers {[o.name for o in outputs]}; a {spec.task.value} model answers a label tensor and a "
            "[rows, classes] probability tensor"
        )
    _keep_outputs(graph, [labels[0], probabilities[0]])
    return (LABEL, PROBABILITIES)


def _keep_outputs(graph: onnx.GraphProto, kept: list[onnx.ValueInfoProto]) -> None:
    names = [item.name for item in kept]
    for item in list(graph.output):
        if item.name not in names:
            graph.output.remove(item)
    ordered = sorted(graph.output, key=lambda item: names.index(item.name))
    del graph.output[:]
    graph.output.extend(ordered)


def graph_labels(values: np.ndarray, spec: ModelSpec, classes: list[Any]) -> None:
    """An adapted classifier graph answers the spec's classes (strings as strings, integers as integers).

    Raises:
        SourceError: A label outside the classes, e.g. codes 0..k-1 for string classes.
    """
    seen = sorted({str(value) for value in np.asarray(values).ravel().tolist()})
    unknown = [value for value in seen if value not in {str(label) for label in classes}]
    if unknown:
        raise SourceError(
            f"the graph answers the labels {unknown[:5]}, which are not the spec's classes {classes}: export it "
            "with the class labels (or give target.classes as the graph answers them)"
        )
