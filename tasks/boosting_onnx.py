"""XGBoost, LightGBM and CatBoost models for skl2onnx, converted the way each library computes.

skl2onnx knows none of them: :func:`register` adds onnxmltools' converters (XGBoost, LightGBM) and
one built on CatBoost's own ONNX export, for the library a model uses (they are the optional ``boosting``
extra; a model of scikit-learn alone imports none of them), bare and inside pipelines and column transformers.

Precision, library by library:

- **XGBoost** and **CatBoost** compare float32 features with float32 thresholds: their trees get a
  cast to float32 in front (``tasks.onnx_convert`` does that for every such tree model).
- **LightGBM** compares the float64 value with a float64 threshold. A float32 ``TreeEnsemble``
  sends a value lying between the threshold and its float32 rounding down the other branch, and
  its float32 leaf values add up an error that grows with the trees. Its ensembles therefore take
  float64 inputs and carry their thresholds, leaf values and base values as float64 tensors
  (``*_as_tensor``, ``ai.onnx.ml`` opset 3): the graph routes every row as LightGBM does.

Classifiers reach the converters with labels ``0..k-1`` (``tasks.boosting.EncodedLabels``); the
export maps those codes back to the class labels in the graph.
"""

from __future__ import annotations

import copy
import importlib.util
from functools import cache
from typing import Any

from onnx import TensorProto, helper

from mlops.spec import BOOSTING_FAMILIES

TREE_OPS = ("TreeEnsembleRegressor", "TreeEnsembleClassifier")
DOUBLE_ATTRIBUTES = ("nodes_values", "target_weights", "class_weights", "base_values")


@cache
def installed(library: str) -> bool:
    """Whether ``library`` (and, for XGBoost and LightGBM, onnxmltools) imports: present, and its native parts load
    (XGBoost and LightGBM need the OpenMP runtime, libgomp, which slim images lack)."""
    needed = (library,) if library == "catboost" else (library, "onnxmltools")
    if any(importlib.util.find_spec(name) is None for name in needed):
        return False
    try:
        for name in needed:
            importlib.import_module(name)
    except (ImportError, OSError):
        return False
    return True


class _DoubleTrees:
    """A converter's container whose tree ensembles keep float64 thresholds and values (``*_as_tensor``)."""

    def __init__(self, container: Any) -> None:
        self._container = container

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)

    def add_node(self, op_type: str, inputs: Any, outputs: Any, op_domain: str = "", **attrs: Any) -> Any:
        if op_type in TREE_OPS:
            for key in DOUBLE_ATTRIBUTES:
                if key in attrs:
                    values = [float(value) for value in attrs.pop(key)]
                    attrs[f"{key}_as_tensor"] = helper.make_tensor(key, TensorProto.DOUBLE, [len(values)], values)
            attrs["op_version"] = 3
        return self._container.add_node(op_type, inputs, outputs, op_domain=op_domain, **attrs)


def _convert_xgboost(scope: Any, operator: Any, container: Any) -> None:
    """onnxmltools' converter, given a copy whose booster has no feature names (a model fitted on a DataFrame
    names its splits by column, and the converter reads ``f<index>`` only)."""
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost

    model = operator.raw_operator
    if model.get_booster().feature_names is not None:
        booster = model.get_booster().copy()
        booster.feature_names, booster.feature_types = None, None
        model = copy.copy(model)
        model._Booster = booster
        operator.raw_operator = model
    convert_xgboost(scope, operator, container)


def _convert_lightgbm(scope: Any, operator: Any, container: Any) -> None:
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

    convert_lightgbm(scope, operator, _DoubleTrees(container))


def _float_outputs(shapes: Any) -> Any:
    """skl2onnx's shape calculator, with the tree ensemble's numeric outputs float32 whatever its input."""

    def calculate(operator: Any) -> None:
        from skl2onnx.common.data_types import FloatTensorType

        shapes(operator)
        for output in operator.outputs:
            if output.type.__class__.__name__ == "DoubleTensorType":
                output.type = FloatTensorType(output.type.shape)

    return calculate


def _convert_catboost(scope: Any, operator: Any, container: Any) -> None:
    """CatBoost's own ONNX export (numeric features only), its tree node re-made on the operator's input."""
    from catboost.utils import convert_to_onnx_object

    exported = convert_to_onnx_object(operator.raw_operator)
    node = next(node for node in exported.graph.node if node.op_type in TREE_OPS)
    attrs = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
    attrs = {key: value.decode() if isinstance(value, bytes) else value for key, value in attrs.items()}
    for key, value in attrs.items():
        if isinstance(value, list) and value and isinstance(value[0], bytes):
            attrs[key] = [item.decode() for item in value]
    attrs.pop("name", None)
    name = scope.get_unique_operator_name(node.op_type)
    if node.op_type == "TreeEnsembleClassifier":
        label, probabilities = operator.outputs
        container.add_node(
            node.op_type,
            operator.inputs[0].full_name,
            [label.full_name, probabilities.full_name],
            op_domain="ai.onnx.ml",
            op_version=1,
            name=name,
            **attrs,
        )
        return
    # CatBoost writes a regression output of shape (N); skl2onnx's regressors answer (N, 1).
    raw = scope.get_unique_variable_name("catboost_raw")
    container.add_node(
        node.op_type, operator.inputs[0].full_name, raw, op_domain="ai.onnx.ml", op_version=1, name=name, **attrs
    )
    shape = scope.get_unique_variable_name("shape")
    container.add_initializer(shape, TensorProto.INT64, [2], [-1, 1])
    container.add_node(
        "Reshape", [raw, shape], operator.outputs[0].full_name, name=scope.get_unique_operator_name("Reshape")
    )


def _parse_catboost_classifier(scope: Any, model: Any, inputs: Any, custom_parsers: Any = None) -> list[Any]:
    """A label and a probabilities output (skl2onnx takes CatBoost, no ClassifierMixin, for a regressor)."""
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType

    operator = scope.declare_local_operator("CatBoostCatBoostClassifier", model)
    operator.inputs = inputs
    operator.outputs.append(scope.declare_local_variable("label", Int64TensorType()))
    operator.outputs.append(scope.declare_local_variable("probabilities", FloatTensorType()))
    return list(operator.outputs)


def input_width(estimator: Any) -> int:
    """How many features a fitted model takes (CatBoost's ``n_features_in_`` reads 0 once it was unpickled or
    loaded by skops; its ``feature_names_`` survive)."""
    width = int(getattr(estimator, "n_features_in_", 0) or 0)
    if not width and type(estimator).__module__.startswith("catboost"):
        width = len(estimator.feature_names_ or [])
    return width


@cache
def register(library: str) -> bool:
    """Register ``library``'s converters with skl2onnx (once per process); False where it does not import."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    if library not in BOOSTING_FAMILIES or not installed(library):
        return False
    options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    classifier, regressor = calculate_linear_classifier_output_shapes, calculate_linear_regressor_output_shapes
    if library == "xgboost":
        from xgboost import XGBClassifier, XGBRegressor

        update_registered_converter(
            XGBClassifier, "XGBoostXGBClassifier", classifier, _convert_xgboost, options=options
        )
        update_registered_converter(XGBRegressor, "XGBoostXGBRegressor", regressor, _convert_xgboost)
    elif library == "lightgbm":
        from lightgbm import LGBMClassifier, LGBMRegressor

        update_registered_converter(
            LGBMClassifier, "LightGbmLGBMClassifier", _float_outputs(classifier), _convert_lightgbm, options=options
        )
        update_registered_converter(
            LGBMRegressor, "LightGbmLGBMRegressor", _float_outputs(regressor), _convert_lightgbm
        )
    else:
        from catboost import CatBoostClassifier, CatBoostRegressor

        update_registered_converter(
            CatBoostClassifier,
            "CatBoostCatBoostClassifier",
            classifier,
            _convert_catboost,
            parser=_parse_catboost_classifier,
            options=options,
        )
        update_registered_converter(CatBoostRegressor, "CatBoostCatBoostRegressor", regressor, _convert_catboost)
    return True
