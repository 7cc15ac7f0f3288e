"""What the gradient-boosting benches share: the tables (the shipped examples and a multiclass one), a team's own
pipeline factories, spec variants, the middle of a grid and a fitted model written as a serving bundle.

The benches put the repository on ``sys.path`` and import this as ``bench._common``, so
``bench._common:<factory>`` can be named as a spec's ``training.pipeline``, as a team names theirs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops.spec import BOOSTING_FAMILIES, ModelSpec, load_spec
from serving.bundle import ModelMetadata, write_bundle
from tasks.export import bundle_metadata
from tasks.features import default_grid
from tasks.onnx_convert import to_onnx
from tasks.train import TrainingSet

ROOT = Path(__file__).resolve().parents[1]

DIABETES_FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
TABLES = ("diabetes", "progression", "tumours", "wine")  # regression x2 (numeric, mixed), binary, multiclass
WINE_COLUMNS = 6


def wine_frame() -> pd.DataFrame:
    """The multiclass table: scikit-learn's wine measurements (6 columns, 5 % gaps in alcohol) with a string column
    ``region`` and the label ``cultivar`` as strings (the shape of the test suite's multiclass table)."""
    from sklearn.datasets import load_wine

    source = load_wine(as_frame=True)
    rng = np.random.default_rng(3)
    table = source.frame.iloc[:, :WINE_COLUMNS].copy()
    table = table.assign(region=np.array(["hill", "valley", "coast"], dtype=object)[rng.integers(0, 3, len(table))])
    table["alcohol"] = table["alcohol"].mask(rng.random(len(table)) < 0.05)
    return table.assign(cultivar=np.array(["barolo", "grignolino", "barbera"])[source.target])


def wine_spec() -> ModelSpec:
    """:func:`wine_frame` as a multiclass model spec (logistic regression by default, like the shipped specs)."""
    numbers = [{"name": str(name), "kind": "numeric"} for name in wine_frame().columns[:WINE_COLUMNS]]
    numbers[0]["nullable"] = True
    return ModelSpec.model_validate(
        {
            "name": "wine",
            "task": "multiclass",
            "target": {"column": "cultivar"},
            "features": [*numbers, {"name": "region", "kind": "categorical"}],
            "data": {"example": "bench._common:wine_frame"},
            "training": {"families": ["logistic_regression"], "seed": 42},
            "promotion": {"primary": "roc_auc", "tolerances": {}},
        }
    )


def table_spec(name: str) -> ModelSpec:
    """A table's spec: the shipped one in models/, or the multiclass one built here."""
    return wine_spec() if name == "wine" else load_spec(name, ROOT / "models")


def variant(spec: ModelSpec, **training: Any) -> ModelSpec:
    """The spec with its ``training`` section changed (e.g. ``preprocess=False``, ``pipeline=...``); a grid the
    spec gives for its own family is dropped when another family or a pipeline is trained."""
    if spec.training.grid is not None and training.get("families", spec.training.families) != spec.training.families:
        training.setdefault("grid", None)
    if training.get("pipeline"):
        training.update(families=[], grid=None)
    return spec.model_copy(update={"training": spec.training.model_copy(update=training)})


def middle_params(spec: ModelSpec, family: str) -> dict[str, Any]:
    """The middle of the family's grid for this spec, as ``model__``-less estimator parameters."""
    grid = default_grid(variant(spec, families=[family]), family)
    return {name.removeprefix("model__"): values[len(values) // 2] for name, values in grid.items()}


def _own(library: str, classifier: bool, with_pipeline: bool) -> Any:
    def factory(numeric: list[str], categorical: list[str]) -> Any:
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import OrdinalEncoder

        from tasks.boosting import boosting_estimator

        size = "iterations" if library == "catboost" else "n_estimators"
        model = boosting_estimator(library, classifier, seed=0).set_params(**{size: 60})
        if not with_pipeline:
            return model
        codes = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, dtype=float)
        parts = [("numbers", SimpleImputer(strategy="median"), numeric), ("codes", codes, categorical)]
        return Pipeline([("prep", ColumnTransformer([part for part in parts if part[2]])), ("model", model)])

    return factory


# A team's own factories, named ``bench._common:<library>_<classifier|regressor>_<pipeline|bare>``: the library's
# model (60 trees) bare, or behind their own ColumnTransformer (median-imputed numbers, ordinal-coded categories).
OWN_FORMS = ("pipeline", "bare")
for _library in BOOSTING_FAMILIES:
    for _role in ("classifier", "regressor"):
        for _form in OWN_FORMS:
            globals()[f"{_library}_{_role}_{_form}"] = _own(_library, _role == "classifier", _form == "pipeline")


def factory_reference(library: str, classifier: bool, form: str) -> str:
    return f"bench._common:{library}_{'classifier' if classifier else 'regressor'}_{form}"


def write_model_bundle(model: Any, data: TrainingSet, family: str, directory: Path) -> tuple[Path, ModelMetadata]:
    """A fitted model on ``data``'s features exported and bundled as training bundles it (without MLflow)."""
    converted = to_onnx(model, data.input_columns)
    onnx_bytes = converted.model.SerializeToString()
    classes = tuple(model.classes_.tolist()) if data.spec.task.is_classification else ()
    metadata = bundle_metadata(data, converted, onnx_bytes, family, classes, version="bench")
    return write_bundle(directory / family, onnx_bytes, metadata), metadata
