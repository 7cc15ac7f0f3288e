"""scikit-learn pipeline → ONNX graph with one float64 input, computed like scikit-learn does.

Every exported graph takes ``input``: float64 ``[rows, features]`` and returns ``variable``:
float64 ``[rows, 1]``. Linear models and preprocessing run in double precision. Tree
ensembles cannot (skl2onnx's double tree ensembles do not load in onnxruntime), so the
graph does what scikit-learn itself does: preprocessing in float64, then a cast to float32
right before the trees. A float32 graph end to end puts rows near a split on the other side
(measured off by 3.7 on a target range of 321).
"""

from __future__ import annotations

from typing import Any

import onnx
from onnx import TensorProto, helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
from sklearn.ensemble import (
    ExtraTreesRegressor,
    GradientBoostingRegressor,
    HistGradientBoostingRegressor,
    RandomForestRegressor,
)
from sklearn.pipeline import Pipeline
from sklearn.tree import DecisionTreeRegressor, ExtraTreeRegressor

INPUT_NAME = "input"
OUTPUT_NAME = "variable"
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
FLOAT32_ONLY = (
    RandomForestRegressor,
    ExtraTreesRegressor,
    GradientBoostingRegressor,
    HistGradientBoostingRegressor,
    DecisionTreeRegressor,
    ExtraTreeRegressor,
)


class ExportError(RuntimeError):
    """The model could not be converted to ONNX, or the ONNX model disagrees with it."""


def to_onnx(model: Any, n_features: int) -> onnx.ModelProto:
    """Convert a fitted regressor or pipeline.

    Raises:
        ExportError: skl2onnx has no converter for a step, or conversion failed.
    """
    steps = list(model.steps) if isinstance(model, Pipeline) else [("model", model)]
    estimator = steps[-1][1]
    try:
        if not isinstance(estimator, FLOAT32_ONLY):
            return _named(_convert(model, DoubleTensorType([None, n_features]), INPUT_NAME, OUTPUT_NAME), estimator)
        tree = _convert(estimator, FloatTensorType([None, n_features]), "tree_input", "tree_output")
        preprocessing = (
            _convert(Pipeline(steps[:-1]), DoubleTensorType([None, n_features]), INPUT_NAME, "preprocessed")
            if len(steps) > 1
            else None
        )
    except Exception as error:  # skl2onnx raises plain RuntimeError/NotImplementedError subclasses
        raise ExportError(f"skl2onnx cannot convert {type(estimator).__name__}: {error}") from error
    return _named(_chain_through_float32(preprocessing, tree, n_features), estimator)


def _named(converted: onnx.ModelProto, estimator: Any) -> onnx.ModelProto:
    """skl2onnx names the graph with a random uuid; a fixed name makes the same model the same bytes
    (so its sha256, the key of image reuse and of the immutable version tag, is reproducible)."""
    converted.graph.name = type(estimator).__name__
    return converted


def _convert(model: Any, input_type: Any, input_name: str, output_name: str) -> onnx.ModelProto:
    converted: onnx.ModelProto = convert_sklearn(
        model,
        initial_types=[(input_name, input_type)],
        final_types=[(output_name, type(input_type)([None, 1]))],
        target_opset=TARGET_OPSET,
    )
    return converted


def _chain_through_float32(preprocessing: onnx.ModelProto | None, tree: onnx.ModelProto, n: int) -> onnx.ModelProto:
    """input (f64) → [preprocessing (f64)] → Cast f32 → trees (f32) → Cast f64 → variable."""
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    cast_source = INPUT_NAME
    opsets = {entry.domain: entry.version for entry in tree.opset_import}
    if preprocessing is not None:
        preprocessing = onnx.compose.add_prefix(preprocessing, "pre_", rename_inputs=False, rename_outputs=False)
        nodes.extend(preprocessing.graph.node)
        initializers.extend(preprocessing.graph.initializer)
        cast_source = "preprocessed"
        for entry in preprocessing.opset_import:
            opsets[entry.domain] = max(opsets.get(entry.domain, 0), entry.version)
    tree = onnx.compose.add_prefix(tree, "tree_", rename_inputs=False, rename_outputs=False)
    nodes.append(helper.make_node("Cast", [cast_source], ["tree_input"], to=TensorProto.FLOAT, name="to_float32"))
    nodes.extend(tree.graph.node)
    initializers.extend(tree.graph.initializer)
    nodes.append(helper.make_node("Cast", ["tree_output"], [OUTPUT_NAME], to=TensorProto.DOUBLE, name="to_float64"))
    graph = helper.make_graph(
        nodes,
        "sklearn_pipeline",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.DOUBLE, [None, n])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.DOUBLE, [None, 1])],
        initializers,
    )
    combined = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(domain, version) for domain, version in sorted(opsets.items())],
        producer_name="mlops",
    )
    combined.ir_version = tree.ir_version
    onnx.checker.check_model(combined)
    return combined
