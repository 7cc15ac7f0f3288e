"""scikit-learn model → ONNX graph with one input per column, computed the way scikit-learn computes it.

Inputs: one ``[rows, 1]`` tensor per feature, float64 for numbers, integers and flags, string for
categories (a missing category arrives as the spec's fill string). A model whose features are all
numeric gets one float64 ``input`` matrix ``[rows, features]`` instead, split into the columns
inside the graph: the server's fast path. skl2onnx renames columns whose names are not
identifiers (``mean radius`` → ``mean_radius``); :class:`InputColumn` records both names.

Outputs: ``variable`` (float64 ``[rows, 1]``) for regressors; ``label`` and ``probabilities``
(float64 ``[rows, classes]``, no ZipMap) for classifiers.

Precision: preprocessing and linear models run in double. Tree ensembles cannot (skl2onnx's double
tree ensembles do not load in onnxruntime), so the graph does what scikit-learn does: preprocessing
in float64, then a cast to float32 right before the trees. onnxruntime has no double ``Imputer``
kernel, so :func:`_convert_imputer` imputes numbers with ``IsNaN``/``Where`` in double.
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import pandas as pd
from onnx import TensorProto, helper
from skl2onnx import convert_sklearn, update_registered_converter
from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType
from skl2onnx.operator_converters.imputer_op import convert_sklearn_imputer
from skl2onnx.proto import onnx_proto
from skl2onnx.shape_calculators.imputer import calculate_sklearn_imputer_output_shapes
from sklearn.base import is_classifier
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.tree import BaseDecisionTree

from tasks.boosting import EncodedLabels, library_of
from tasks.boosting_onnx import input_width
from tasks.boosting_onnx import register as register_boosting
from tasks.linear_fold import fold_scalers

MATRIX_INPUT = "input"
OUTPUT_NAME = "variable"
LABEL = "label"
PROBABILITIES = "probabilities"
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
FLOAT32_ONLY = (
    BaseDecisionTree,
    RandomForestRegressor,
    RandomForestClassifier,
    ExtraTreesRegressor,
    ExtraTreesClassifier,
    GradientBoostingRegressor,
    GradientBoostingClassifier,
    HistGradientBoostingRegressor,
    HistGradientBoostingClassifier,
)


class ExportError(RuntimeError):
    """The model could not be converted to ONNX, or the ONNX model disagrees with it.

    Attributes:
        detail: The converter's full output (traceback), for a run artifact, never for the log.
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail or message


@dataclass(frozen=True)
class InputColumn:
    """One column of the model's input: its name in the data and in the graph, and its tensor type."""

    column: str
    name: str
    type: str  # "double" or "string"


@dataclass(frozen=True)
class Converted:
    """An exported graph and how to feed it.

    Attributes:
        model: The ONNX graph.
        columns: The features in order, each with its graph input (when not a matrix).
        matrix: True when the graph takes one float64 ``input`` matrix of every feature.
        outputs: ``(variable,)`` or ``(label, probabilities)``.
    """

    model: onnx.ModelProto
    columns: tuple[InputColumn, ...]
    matrix: bool
    outputs: tuple[str, ...]

    def feeds(self, features: pd.DataFrame) -> dict[str, np.ndarray]:
        """The session's inputs for a frame of typed features (see ``tasks.features.typed_features``)."""
        if self.matrix:
            return {MATRIX_INPUT: features[[c.column for c in self.columns]].to_numpy(dtype=np.float64)}
        return {
            c.name: features[c.column].to_numpy(dtype=np.float64 if c.type == "double" else object).reshape(-1, 1)
            for c in self.columns
        }


def _convert_imputer(scope: Any, operator: Any, container: Any) -> None:
    """SimpleImputer on doubles as IsNaN + Where (onnxruntime has no double Imputer); skl2onnx's otherwise."""
    if not isinstance(operator.inputs[0].type, DoubleTensorType):
        convert_sklearn_imputer(scope, operator, container)
        return
    from skl2onnx.operator_converters.common import concatenate_variables

    statistics = np.asarray(operator.raw_operator.statistics_, dtype=np.float64)
    values = concatenate_variables(scope, operator.inputs, container)
    fill = scope.get_unique_variable_name("fill")
    container.add_initializer(fill, onnx_proto.TensorProto.DOUBLE, [len(statistics)], statistics.tolist())
    missing = scope.get_unique_variable_name("missing")
    container.add_node("IsNaN", [values], [missing], name=scope.get_unique_operator_name("IsNaN"))
    container.add_node(
        "Where", [missing, fill, values], operator.outputs[0].full_name, name=scope.get_unique_operator_name("Where")
    )


def register_converters(library: str | None = None) -> None:
    """Our double-precision imputer in place of skl2onnx's, and a gradient-boosting library's converters
    (idempotent; called before every conversion)."""
    update_registered_converter(
        SimpleImputer, "SklearnSimpleImputer", calculate_sklearn_imputer_output_shapes, _convert_imputer
    )
    if library is not None:
        register_boosting(library)


def float32_trees(estimator: Any) -> bool:
    """Trees that compare float32 features (scikit-learn's, XGBoost's, CatBoost's): a cast goes in front."""
    return isinstance(estimator, FLOAT32_ONLY) or library_of(estimator) in ("xgboost", "catboost")


def unscaled(estimator: Any) -> bool:
    """Tree models, which need no scaling (LightGBM's compare in float64, the others' in float32)."""
    return float32_trees(estimator) or library_of(estimator) == "lightgbm"


def _flatten(model: Any) -> list[tuple[str, Any]]:
    if not isinstance(model, Pipeline):
        return [("model", model)]
    steps: list[tuple[str, Any]] = []
    for name, step in model.steps:
        if step is None or step == "passthrough":
            continue
        steps.extend(_flatten(step) if isinstance(step, Pipeline) else [(name, step)])
    return steps


def _is_classifier(estimator: Any) -> bool:
    try:
        return bool(is_classifier(estimator))
    except AttributeError:  # not a scikit-learn estimator at all: its conversion fails with a clear message
        return False


def graph_name(column: str) -> str:
    """The input name skl2onnx gives a column."""
    return re.sub(r"[^0-9A-Za-z_]", "_", column)


def _types(columns: list[InputColumn]) -> list[tuple[str, Any]]:
    return [
        (c.column, DoubleTensorType([None, 1]) if c.type == "double" else StringTensorType([None, 1])) for c in columns
    ]


def _convert(model: Any, initial_types: list[tuple[str, Any]], classifier: Any = None) -> onnx.ModelProto:
    options = {id(classifier): {"zipmap": False}} if classifier is not None else None
    converted: onnx.ModelProto = convert_sklearn(
        model, initial_types=initial_types, target_opset=TARGET_OPSET, options=options
    )
    return converted


def first_line(error: BaseException) -> str:
    """The first line of an error's message, at most 300 characters: what a log line or a short error carries."""
    text = str(error).strip().splitlines()
    first = text[0] if text else type(error).__name__
    return first if len(first) <= 300 else first[:297] + "..."


def to_onnx(model: Any, columns: list[tuple[str, str]]) -> Converted:
    """Convert a fitted estimator or pipeline that takes the typed ``columns`` (name, ``double``/``string``).

    Raises:
        ExportError: skl2onnx has no converter for a step, or conversion failed (the full output in ``detail``).
    """
    inputs = [InputColumn(column, graph_name(column), kind) for column, kind in columns]
    names = [c.name for c in inputs]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ExportError(f"columns map to the same ONNX input names {duplicated}: rename one of them")
    steps = _flatten(model)
    folded = fold_scalers(steps)
    classes: np.ndarray | None = None
    if isinstance(folded[-1][1], EncodedLabels):  # the graph maps the codes back to the labels
        classes = np.asarray(folded[-1][1].classes_)
        folded = [*folded[:-1], (folded[-1][0], folded[-1][1].estimator_)]
    if folded is not steps:  # the graph scores the same model without its scaling nodes (or label encoder)
        steps, model = folded, Pipeline(folded) if len(folded) > 1 else folded[0][1]
    estimator = steps[-1][1]
    register_converters(library_of(estimator))
    classifier = estimator if _is_classifier(estimator) else None
    label = type(estimator).__name__
    matrix = all(c.type == "double" for c in inputs)
    # Several double inputs into anything but a ColumnTransformer get concatenated by skl2onnx's
    # FeatureVectorizer, which outputs float32: such a model takes the matrix directly.
    direct = matrix and not isinstance(steps[0][1], ColumnTransformer)
    types = [(MATRIX_INPUT, DoubleTensorType([None, len(inputs)]))] if direct else _types(inputs)
    try:
        if float32_trees(estimator):
            graph = _through_float32(steps, inputs, classifier, types, direct)
        else:
            graph = _convert(model, types, classifier)
        outputs = (LABEL, PROBABILITIES) if classifier is not None else (OUTPUT_NAME,)
        graph = double_outputs(graph, outputs)
        if classes is not None:
            graph = _decode_labels(graph, classes)
    except ExportError:
        raise
    except Exception as error:  # skl2onnx raises plain RuntimeError/NotImplementedError/TypeError subclasses
        raise ExportError(f"skl2onnx cannot convert {label}: {first_line(error)}", traceback.format_exc()) from error
    if matrix and not direct:
        graph = _matrix_input(graph, [c.name for c in inputs])
    graph.graph.name = label  # skl2onnx's random uuid would make the same model different bytes
    onnx.checker.check_model(graph)
    return Converted(graph, tuple(inputs), matrix, outputs)


def _through_float32(
    steps: list[tuple[str, Any]],
    inputs: list[InputColumn],
    classifier: Any,
    types: list[tuple[str, Any]],
    direct: bool,
) -> onnx.ModelProto:
    """inputs (f64) → preprocessing (f64) → Cast f32 → trees (f32)."""
    estimator = steps[-1][1]
    width = input_width(estimator)
    trees = _convert(estimator, [("tree_input", FloatTensorType([None, width]))], classifier)
    if len(steps) > 1:
        preprocessing = _convert(Pipeline(steps[:-1]), types)
        if len(preprocessing.graph.output) != 1:
            raise ExportError("the preprocessing in front of the trees has more than one output")
        source = "pre_" + preprocessing.graph.output[0].name
    else:
        if any(c.type == "string" for c in inputs):
            raise ExportError(f"{type(estimator).__name__} cannot take string columns: put an encoder in front of it")
        preprocessing, source = None, "concatenated"
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    opsets = {entry.domain: entry.version for entry in trees.opset_import}
    graph_inputs: list[onnx.ValueInfoProto]
    if preprocessing is not None:
        prefixed = onnx.compose.add_prefix(preprocessing, "pre_", rename_inputs=False, rename_outputs=True)
        nodes.extend(prefixed.graph.node)
        initializers.extend(prefixed.graph.initializer)
        graph_inputs = list(prefixed.graph.input)
        for entry in prefixed.opset_import:
            opsets[entry.domain] = max(opsets.get(entry.domain, 0), entry.version)
    elif direct:
        graph_inputs = [helper.make_tensor_value_info(MATRIX_INPUT, TensorProto.DOUBLE, [None, len(inputs)])]
        source = MATRIX_INPUT
    else:
        graph_inputs = [helper.make_tensor_value_info(c.name, TensorProto.DOUBLE, [None, 1]) for c in inputs]
        nodes.append(helper.make_node("Concat", [c.name for c in inputs], [source], axis=1, name="concat_columns"))
    tree = onnx.compose.add_prefix(trees, "tree_", rename_inputs=False, rename_outputs=False)
    nodes.append(helper.make_node("Cast", [source], ["tree_input"], to=TensorProto.FLOAT, name="to_float32"))
    nodes.extend(tree.graph.node)
    initializers.extend(tree.graph.initializer)
    graph = helper.make_graph(nodes, "sklearn_pipeline", graph_inputs, list(tree.graph.output), initializers)
    combined = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(domain, version) for domain, version in sorted(opsets.items())],
        producer_name="mlops",
    )
    combined.ir_version = trees.ir_version
    return combined


def double_outputs(model: onnx.ModelProto, outputs: tuple[str, ...]) -> onnx.ModelProto:
    """Outputs named ``outputs`` in order; numbers cast to float64 (labels keep their type)."""
    graph = model.graph
    if len(graph.output) != len(outputs):
        found = [output.name for output in graph.output]
        raise ExportError(f"the converted graph has outputs {found}, expected {list(outputs)}")
    for output, wanted in zip(list(graph.output), outputs, strict=True):
        elem = output.type.tensor_type.elem_type
        numeric = wanted != LABEL
        if output.name == wanted and (not numeric or elem == TensorProto.DOUBLE):
            continue
        raw = f"{wanted}_raw"
        for node in graph.node:
            node.output[:] = [raw if name == output.name else name for name in node.output]
            node.input[:] = [raw if name == output.name else name for name in node.input]
        if numeric:
            graph.node.append(helper.make_node("Cast", [raw], [wanted], to=TensorProto.DOUBLE, name=f"{wanted}_f64"))
            elem = TensorProto.DOUBLE
        else:
            graph.node.append(helper.make_node("Identity", [raw], [wanted], name=f"{wanted}_out"))
        dims = [d.dim_param or d.dim_value or None for d in output.type.tensor_type.shape.dim]
        output.CopyFrom(helper.make_tensor_value_info(wanted, elem, dims))
    return model


def _decode_labels(model: onnx.ModelProto, classes: np.ndarray) -> onnx.ModelProto:
    """The ``label`` output (codes ``0..k-1``) mapped to the class labels: strings, or integers and flags."""
    if all(isinstance(label, str) for label in classes.tolist()):
        table = helper.make_tensor("class_labels", TensorProto.STRING, [len(classes)], [c.encode() for c in classes])
        elem = TensorProto.STRING
    elif classes.dtype.kind in "biu" or all(float(label).is_integer() for label in classes.tolist()):
        table = helper.make_tensor("class_labels", TensorProto.INT64, [len(classes)], classes.astype(np.int64))
        elem = TensorProto.INT64
    else:
        raise ExportError(f"class labels {classes.tolist()[:5]} are neither strings nor integers: relabel them")
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["label_codes" if name == LABEL else name for name in node.output]
        node.input[:] = ["label_codes" if name == LABEL else name for name in node.input]
    graph.initializer.append(table)
    graph.node.append(helper.make_node("Gather", ["class_labels", "label_codes"], [LABEL], axis=0, name="decode"))
    output = next(output for output in graph.output if output.name == LABEL)
    dims = [d.dim_param or d.dim_value or None for d in output.type.tensor_type.shape.dim]
    output.CopyFrom(helper.make_tensor_value_info(LABEL, elem, dims))
    return model


def _matrix_input(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """One float64 ``input`` matrix split into the per-column inputs the converted graph takes."""
    graph = model.graph
    sizes = helper.make_tensor("column_sizes", TensorProto.INT64, [len(names)], [1] * len(names))
    split = helper.make_node("Split", [MATRIX_INPUT, "column_sizes"], names, axis=1, name="split_columns")
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(MATRIX_INPUT, TensorProto.DOUBLE, [None, len(names)]))
    graph.initializer.append(sizes)
    graph.node.insert(0, split)
    return model


def numeric_columns(names: list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
    """The input columns of a model on numbers only."""
    return [(name, "double") for name in names]
