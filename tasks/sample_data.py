"""Example data that packages ship (no downloads), cut into ordered batches that 'arrive'.

- ``diabetes_frame``: scikit-learn's diabetes set in original units (the demo regression);
- ``tumours_frame``: scikit-learn's breast-cancer measurements made into the table a team really
  has: a patient id, string columns, an integer count, a flag, missing values, a free-text column
  to ignore, and string class labels (the example classifier, ``models/tumours.yaml``);
- ``progression_frame``: the diabetes table as a clinic's records (a record id, the sex code and a
  clinic as categories, gaps in two measurements, a note to ignore): the example gradient-boosting
  regression (``models/progression.yaml``).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer, load_diabetes

from mlops.spec import ModelSpec
from tasks.dataset import join_uri, write_bytes

DEFAULT_BATCHES = 4
TUMOUR_MEASUREMENTS = (
    "mean radius",
    "mean texture",
    "mean smoothness",
    "mean concave points",
    "worst area",
    "worst symmetry",
)


def diabetes_frame() -> pd.DataFrame:
    """The 442 rows in original units (age in years, sex 1/2, bmi, ...), plus ``target``."""
    data = load_diabetes(as_frame=True, scaled=False)
    frame: pd.DataFrame = data.frame.astype("float64")
    return frame


def tumours_frame(seed: int = 7) -> pd.DataFrame:
    """569 rows in arrival order: ``patient_id``, six measurements (two with gaps), ``lymph_nodes`` (integer, gaps),
    ``repeat_biopsy`` (flag), ``clinic`` (string, gaps), ``texture_grade`` (string), ``referral_note``
    (free text) and ``diagnosis`` (``benign``/``malignant``). The same seed gives the same table."""
    data = load_breast_cancer(as_frame=True)
    rng = np.random.default_rng(seed)
    frame = data.frame[list(TUMOUR_MEASUREMENTS)].copy()
    rows = len(frame)
    malignant = data.target.to_numpy() == 0
    frame.insert(0, "patient_id", [f"P{index:05d}" for index in range(1, rows + 1)])
    nodes = rng.poisson(np.where(malignant, 3.0, 0.6)).astype("float64")
    frame["lymph_nodes"] = pd.array(np.where(rng.random(rows) < 0.06, np.nan, nodes)).astype("Int64")
    frame["repeat_biopsy"] = rng.random(rows) < np.where(malignant, 0.4, 0.15)
    clinics = np.array(["north", "south", "east", "west"], dtype=object)
    frame["clinic"] = pd.Series(clinics[rng.integers(0, 4, rows)]).where(rng.random(rows) >= 0.05, None)
    frame["texture_grade"] = pd.cut(
        frame["mean texture"] + rng.normal(0, 2, rows), [-np.inf, 17, 22, np.inf], labels=["fine", "medium", "coarse"]
    ).astype(str)
    for column, share in (("mean smoothness", 0.04), ("worst symmetry", 0.03)):
        frame.loc[rng.random(rows) < share, column] = np.nan
    frame["referral_note"] = np.where(rng.random(rows) < 0.5, "routine", "urgent, see letter")
    frame["diagnosis"] = np.where(malignant, "malignant", "benign")
    # The source file is grouped by class; records arrive in no such order.
    return frame.sample(frac=1, random_state=seed).reset_index(drop=True)


def progression_frame(seed: int = 11) -> pd.DataFrame:
    """442 rows: ``record_id``, ``age``, ``sex`` (the source's code 1/2, as a category), the eight measurements
    (``bmi`` and ``s3`` with gaps), ``clinic`` (string, gaps), ``note`` (free text) and ``target``."""
    frame = diabetes_frame()
    rng = np.random.default_rng(seed)
    rows = len(frame)
    frame.insert(0, "record_id", [f"R{index:05d}" for index in range(1, rows + 1)])
    frame["sex"] = frame["sex"].map({1.0: "1", 2.0: "2"}).astype(object)
    for column, share in (("bmi", 0.04), ("s3", 0.03)):
        frame.loc[rng.random(rows) < share, column] = np.nan
    clinics = np.array(["harbour", "hill", "market"], dtype=object)
    frame.insert(len(frame.columns) - 1, "clinic", pd.Series(clinics[rng.integers(0, 3, rows)]))
    frame.loc[rng.random(rows) < 0.05, "clinic"] = None
    frame.insert(len(frame.columns) - 1, "note", np.where(rng.random(rows) < 0.3, "fasting", ""))
    return frame


def example_frame(spec: ModelSpec) -> pd.DataFrame:
    """The example data a spec names (``data.example``: ``module:function``).

    Raises:
        ValueError: The spec names no example data.
    """
    if spec.data.example is None:
        raise ValueError(f"model {spec.name} names no example data (data.example in its spec): land your own files")
    module, _, function = spec.data.example.partition(":")
    frame: pd.DataFrame = getattr(importlib.import_module(module), function)()
    return frame


def cut_batches(frame: pd.DataFrame, n_batches: int = DEFAULT_BATCHES) -> list[pd.DataFrame]:
    """``frame`` cut into ``n_batches`` consecutive, nearly equal batches."""
    size = -(-len(frame) // n_batches)
    return [frame.iloc[start : start + size].reset_index(drop=True) for start in range(0, len(frame), size)]


def diabetes_batches(n_batches: int = DEFAULT_BATCHES) -> list[pd.DataFrame]:
    """The diabetes set cut into ``n_batches`` consecutive, nearly equal batches."""
    return cut_batches(diabetes_frame(), n_batches)


def batch_name(index: int, prefix: str = "diabetes") -> str:
    return f"{prefix}_batch_{index:03d}.csv"


def land_batches(
    landing_uri: str, indices: list[int], n_batches: int = DEFAULT_BATCHES, spec: ModelSpec | None = None
) -> list[str]:
    """Write the chosen batches of the example data (default: diabetes) as CSV files into the landing area.

    Raises:
        ValueError: An index is outside ``0..n_batches-1``, or the spec names no example data.
    """
    batches = cut_batches(example_frame(spec) if spec is not None else diabetes_frame(), n_batches)
    prefix = spec.name if spec is not None else "diabetes"
    bad = [index for index in indices if not 0 <= index < len(batches)]
    if bad:
        raise ValueError(f"batch indices {bad} out of range: there are {len(batches)} batches (0..{len(batches) - 1})")
    written = []
    for index in indices:
        uri = join_uri(landing_uri, batch_name(index, prefix))
        write_bytes(uri, batches[index].to_csv(index=False).encode())
        written.append(uri)
    return written


DRIFT_COLUMNS = ("age", "bmi", "bp", "s1", "s3", "s5")


def drifted(frame: pd.DataFrame, columns: tuple[str, ...] = DRIFT_COLUMNS, shift_sd: float = 1.5) -> pd.DataFrame:
    """``frame`` with ``columns`` shifted by ``shift_sd`` of their standard deviation: inputs the world sends
    after it changed (6 of the 10 diabetes features: over Evidently's 50 % data-set drift share)."""
    shifted = frame.copy()
    for column in columns:
        shifted[column] = shifted[column] + shift_sd * frame[column].std()
    return shifted


def drift_columns(frame: pd.DataFrame, features: list[str]) -> tuple[str, ...]:
    """The inputs the demo's world shifts: the diabetes story's six, else every floating-point feature."""
    if set(DRIFT_COLUMNS) <= set(features):
        return DRIFT_COLUMNS
    return tuple(frame[features].select_dtypes("floating").columns)


def json_value(value: Any) -> Any:
    """A cell as a client sends it: numbers, strings, booleans, null for any gap."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def client_records(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as a client's ``dataframe_records``: each cell a JSON value (gaps as null)."""
    return [{column: json_value(value) for column, value in record.items()} for record in rows.to_dict("records")]
