"""The default data: scikit-learn's diabetes set, cut into ordered batches that 'arrive'."""

from __future__ import annotations

import pandas as pd
from sklearn.datasets import load_diabetes

from tasks.dataset import join_uri, write_bytes

DEFAULT_BATCHES = 4


def diabetes_frame() -> pd.DataFrame:
    """The 442 rows in original units (age in years, sex 1/2, bmi, ...), plus ``target``."""
    data = load_diabetes(as_frame=True, scaled=False)
    frame: pd.DataFrame = data.frame.astype("float64")
    return frame


def diabetes_batches(n_batches: int = DEFAULT_BATCHES) -> list[pd.DataFrame]:
    """The data set cut into ``n_batches`` consecutive, nearly equal batches."""
    frame = diabetes_frame()
    size = -(-len(frame) // n_batches)
    return [frame.iloc[start : start + size].reset_index(drop=True) for start in range(0, len(frame), size)]


def batch_name(index: int) -> str:
    return f"diabetes_batch_{index:03d}.csv"


def land_batches(landing_uri: str, indices: list[int], n_batches: int = DEFAULT_BATCHES) -> list[str]:
    """Write the chosen batches as CSV files into the landing area.

    Raises:
        ValueError: An index is outside ``0..n_batches-1``.
    """
    batches = diabetes_batches(n_batches)
    bad = [index for index in indices if not 0 <= index < len(batches)]
    if bad:
        raise ValueError(f"batch indices {bad} out of range: there are {len(batches)} batches (0..{len(batches) - 1})")
    written = []
    for index in indices:
        uri = join_uri(landing_uri, batch_name(index))
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
