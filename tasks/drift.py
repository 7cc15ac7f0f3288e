"""A fast drift decision from cached reference quantiles, agreeing with Evidently's per-column test.

Evidently 0.7's ``DataDriftPreset`` judges a numeric column with more than 1000 rows by the
normed Wasserstein distance ``W1(reference, current) / std(reference)`` against 0.1. W1 between
two distributions is the mean absolute difference of their quantile functions, so it can be
computed from the reference's quantiles (stored once, with the model) and the current data's
quantiles on the same grid, instead of re-reading the whole reference for every window.

Error bound: with ``grid`` evenly spaced quantile levels, the quantile-grid integral differs
from the exact W1 by at most ``(max - min) / grid`` per distribution for bounded data, and in
practice far less (the bench compares both). When the current window has more than
``max_rows`` rows, a uniform sample of ``max_rows`` is used; the statistic's sampling error
shrinks like ``1 / sqrt(max_rows)`` (about 0.003 of a standard deviation at 200 000 rows).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from mlops.policies import EVIDENTLY_THRESHOLD

GRID = 1000


def _levels(grid: int) -> np.ndarray:
    return (np.arange(grid) + 0.5) / grid  # midpoints: the integral over (0, 1) by the midpoint rule


@dataclass(frozen=True)
class ReferenceProfile:
    """Per column: quantiles on the grid and the standard deviation, from the training data."""

    columns: tuple[str, ...]
    quantiles: dict[str, list[float]]
    std: dict[str, float]
    rows: int
    grid: int = GRID

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, columns: list[str] | None = None, grid: int = GRID) -> ReferenceProfile:
        chosen = list(columns or frame.columns)
        levels = _levels(grid)
        return cls(
            columns=tuple(chosen),
            quantiles={c: np.nanquantile(frame[c].to_numpy(dtype=float), levels).tolist() for c in chosen},
            std={c: float(np.nanstd(frame[c].to_numpy(dtype=float))) for c in chosen},
            rows=len(frame),
            grid=grid,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ReferenceProfile:
        raw = json.loads(text)
        return cls(tuple(raw["columns"]), raw["quantiles"], raw["std"], int(raw["rows"]), int(raw["grid"]))


@dataclass(frozen=True)
class DriftDecision:
    """Per column the normed Wasserstein distance, and which columns drifted."""

    scores: dict[str, float]
    threshold: float
    rows: int
    sampled: int

    @property
    def drifted(self) -> list[str]:
        return [column for column, score in self.scores.items() if score > self.threshold]

    @property
    def share(self) -> float:
        return len(self.drifted) / len(self.scores) if self.scores else 0.0


def decide(
    profile: ReferenceProfile,
    current: pd.DataFrame,
    threshold: float = EVIDENTLY_THRESHOLD,
    max_rows: int = 200_000,
    seed: int = 0,
) -> DriftDecision:
    """Normed Wasserstein distance of every profiled column of ``current`` against the reference.

    Raises:
        ValueError: A profiled column is missing from ``current``, or ``current`` is empty.
    """
    missing = [c for c in profile.columns if c not in current.columns]
    if missing:
        raise ValueError(f"current data lacks the reference's column(s): {', '.join(missing)}")
    if current.empty:
        raise ValueError("no current rows to compare with the reference")
    sample = current
    if len(current) > max_rows:
        sample = current.iloc[np.random.default_rng(seed).choice(len(current), max_rows, replace=False)]
    levels = _levels(profile.grid)
    scores = {}
    for column in profile.columns:
        observed = np.quantile(sample[column].to_numpy(dtype=float), levels)
        distance = float(np.mean(np.abs(observed - np.asarray(profile.quantiles[column]))))
        scale = profile.std[column] or 1.0
        scores[column] = distance / scale
    return DriftDecision(scores, threshold, len(current), len(sample))
