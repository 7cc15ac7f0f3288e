"""A fast drift decision from a cached reference profile, agreeing with Evidently's per-column test.

Evidently 0.7's ``DataDriftPreset`` picks a statistic per column from the reference's size and the
column's kind (``evidently.legacy.calculations.stattests.registry``); this module picks the same one:

==============================  ===============================  ================================
column                          reference of ≤ 1000 rows          reference of > 1000 rows
==============================  ===============================  ================================
numeric, > 5 distinct values    K-S p-value < 0.05                normed Wasserstein ≥ 0.1
numeric ≤ 5 values, categorical chi-square p < 0.05 (> 2 values)  Jensen-Shannon distance ≥ 0.1
                                Z-test p < 0.05 (≤ 2 values)
==============================  ===============================  ================================

(distinct values are counted over reference and current together, nulls left out on both sides, as
Evidently does). Everything needed is stored once, at training time, in a :class:`ReferenceProfile`:
quantiles on a grid and the standard deviation of numeric columns (W1 between two distributions is
the mean absolute difference of their quantile functions, so it is computed from the reference's
quantiles and the window's on the same grid), category counts of categorical columns and of numeric
columns with few values, and — for a small reference only — the numeric values themselves (K-S).

Error bound of the quantile path: with ``grid`` evenly spaced levels the integral differs from the
exact W1 by at most ``(max - min) / grid`` per distribution for bounded data, far less in practice
(the bench compares both). A window of more than ``max_rows`` rows is sampled uniformly for the
distances (sampling error ~ ``1 / sqrt(max_rows)``); the p-value tests, whose verdict depends on the
sample size, run on the same ``test_rows`` sample the Evidently report is built from.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial import distance

from mlops.policies import EVIDENTLY_P_VALUE, EVIDENTLY_THRESHOLD

GRID = 1000
SMALL_REFERENCE = 1000  # Evidently: p-value tests at or below this many reference rows, distances above
FEW_VALUES = 5  # a numeric column with this many distinct values or fewer is compared by its value counts

KS, WASSERSTEIN, CHI_SQUARE, Z_TEST, JENSEN_SHANNON = "ks", "wasserstein", "chisquare", "z", "jensenshannon"
P_VALUE_METHODS = frozenset({KS, CHI_SQUARE, Z_TEST})


def _levels(grid: int) -> np.ndarray:
    return (np.arange(grid) + 0.5) / grid  # midpoints: the integral over (0, 1) by the midpoint rule


def _key(value: Any, numeric: bool) -> str:
    return repr(float(value)) if numeric else str(value)


def _counts(values: pd.Series, numeric: bool) -> dict[str, int]:
    present = values.dropna()
    if numeric:
        present = present.astype(float)
    counted = present.value_counts(sort=False)
    return {_key(value, numeric): int(count) for value, count in counted.items()}


def _numbers(column: pd.Series) -> np.ndarray:
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return values[np.isfinite(values)]


@dataclass(frozen=True)
class ReferenceProfile:
    """What the drift decision needs of the training data, per column (a few hundred kB as JSON).

    Attributes:
        columns: Every profiled column, in order.
        quantiles, std: Numeric columns: values on the quantile grid, standard deviation.
        rows: Rows of the reference (decides between p-value tests and distances, as in Evidently).
        counts: Categorical columns, and numeric ones with at most ``FEW_VALUES`` values: count per value.
        values: Numeric columns of a small reference: its (non-null) values, for the K-S test.
    """

    columns: tuple[str, ...]
    quantiles: dict[str, list[float]]
    std: dict[str, float]
    rows: int
    grid: int = GRID
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    values: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        columns: list[str] | None = None,
        categorical: list[str] | tuple[str, ...] = (),
        grid: int = GRID,
    ) -> ReferenceProfile:
        """Profile ``columns`` of ``frame`` (default: all); ``categorical`` ones by their category counts."""
        chosen = list(columns or frame.columns)
        levels = _levels(grid)
        small = len(frame) <= SMALL_REFERENCE
        quantiles, std, counts, values = {}, {}, {}, {}
        for column in chosen:
            if column in categorical:
                counts[column] = _counts(frame[column], numeric=False)
                continue
            numbers = _numbers(frame[column])
            quantiles[column] = np.quantile(numbers, levels).tolist() if len(numbers) else [math.nan] * grid
            std[column] = float(np.std(numbers)) if len(numbers) else 0.0
            if len(np.unique(numbers)) <= FEW_VALUES:
                counts[column] = _counts(pd.Series(numbers), numeric=True)
            if small:
                values[column] = numbers.tolist()
        return cls(tuple(chosen), quantiles, std, len(frame), grid, counts, values)

    def is_categorical(self, column: str) -> bool:
        return column not in self.quantiles

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ReferenceProfile:
        raw = json.loads(text)
        return cls(
            tuple(raw["columns"]),
            raw["quantiles"],
            raw["std"],
            int(raw["rows"]),
            int(raw["grid"]),
            raw.get("counts", {}),
            raw.get("values", {}),
        )


@dataclass(frozen=True)
class DriftDecision:
    """Per column the statistic (``methods``), its value (``scores``) and whether the column drifted."""

    scores: dict[str, float]
    threshold: float
    rows: int
    sampled: int
    methods: dict[str, str]
    drifted_columns: tuple[str, ...]
    p_value: float
    effects: dict[str, float]  # distance per column (Wasserstein or Jensen-Shannon)

    def material(self, column: str) -> bool:
        """Drifted by Evidently's test *and* by an effect of at least the distance threshold: a p-value test
        on a large window flags differences too small to matter (the rollout's effect-and-significance rule)."""
        return column in self.drifted_columns and self.effects[column] >= self.threshold

    @property
    def drifted(self) -> list[str]:
        return list(self.drifted_columns)

    @property
    def share(self) -> float:
        return len(self.drifted) / len(self.scores) if self.scores else 0.0

    def rule(self, column: str) -> str:
        """How the column's score is judged, for people: ``K-S p < 0.05``, ``Wasserstein > 0.1``..."""
        method = self.methods[column]
        if method in P_VALUE_METHODS:
            return f"{method} p {'<=' if method == KS else '<'} {self.p_value}"
        return f"{method} >= {self.threshold}"


def decide(
    profile: ReferenceProfile,
    current: pd.DataFrame,
    threshold: float = EVIDENTLY_THRESHOLD,
    max_rows: int = 200_000,
    seed: int = 0,
    p_value: float = EVIDENTLY_P_VALUE,
    test_rows: int = 5000,
) -> DriftDecision:
    """Every profiled column of ``current`` against the reference, by Evidently's statistic for it.

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
    tested = current.sample(n=min(test_rows, len(current)), random_state=0)  # the rows the report compares
    small = profile.rows <= SMALL_REFERENCE
    levels = _levels(profile.grid)
    scores: dict[str, float] = {}
    methods: dict[str, str] = {}
    drifted: list[str] = []
    effects: dict[str, float] = {}
    for column in profile.columns:
        numeric = not profile.is_categorical(column)
        window = tested if small else sample
        counts = _counts(window[column], numeric) if column in profile.counts else {}
        few_values = column in profile.counts and len(counts.keys() | profile.counts[column].keys()) <= FEW_VALUES
        if not numeric or few_values:
            effect = _jensen_shannon(profile.counts[column], counts)
            method, score = _compare_counts(profile.counts[column], counts) if small else (JENSEN_SHANNON, effect)
        else:
            present = _numbers(window[column])
            observed = np.quantile(present, levels) if len(present) else np.asarray(profile.quantiles[column])
            distance = float(np.mean(np.abs(observed - np.asarray(profile.quantiles[column]))))
            effect = distance / (profile.std[column] or 1.0)
            if small:
                method = KS
                score = float(stats.ks_2samp(profile.values[column], present)[1]) if len(present) else 1.0
            else:
                method, score = WASSERSTEIN, effect
        scores[column], methods[column], effects[column] = score, method, effect
        if _drifted(method, score, threshold, p_value):
            drifted.append(column)
    return DriftDecision(scores, threshold, len(current), len(sample), methods, tuple(drifted), p_value, effects)


def _drifted(method: str, score: float, threshold: float, p_value: float) -> bool:
    # each as Evidently compares it
    if method == KS:
        return score <= p_value
    return score < p_value if method in P_VALUE_METHODS else score >= threshold


def _aligned(reference: dict[str, int], current: dict[str, int]) -> tuple[list[str], np.ndarray, np.ndarray]:
    keys = sorted(reference.keys() | current.keys())
    ref = np.array([reference.get(key, 0) for key in keys], dtype=float)
    cur = np.array([current.get(key, 0) for key in keys], dtype=float)
    return keys, ref, cur


def _jensen_shannon(reference: dict[str, int], current: dict[str, int]) -> float:
    """Jensen-Shannon distance (natural log) of the value shares, nulls left out (Evidently's for categories)."""
    _, ref, cur = _aligned(reference, current)
    if not cur.sum() or not ref.sum():
        return 0.0
    return float(distance.jensenshannon(ref / ref.sum(), cur / cur.sum()))


def _compare_counts(reference: dict[str, int], current: dict[str, int]) -> tuple[str, float]:
    """Evidently's categorical test on value counts (nulls left out) for a small reference: chi-square or Z-test
    p-value."""
    keys, ref, cur = _aligned(reference, current)
    if not cur.sum() or not ref.sum():
        return CHI_SQUARE, 1.0
    if len(keys) > 2:
        with np.errstate(divide="ignore", invalid="ignore"):  # a category the reference never saw: p = 0
            p = stats.chisquare(cur, ref * cur.sum() / ref.sum())[1]
        return CHI_SQUARE, float(0.0 if np.isnan(p) else p)
    if len(keys) == 1:
        return Z_TEST, 1.0
    # two-proportion Z-test on the share of the first value (Evidently's proportions_diff_z_test)
    n1, n2 = ref.sum(), cur.sum()
    p1, p2 = ref[0] / n1, cur[0] / n2
    pooled = (ref[0] + cur[0]) / (n1 + n2)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if spread == 0:
        return Z_TEST, 1.0
    return Z_TEST, float(2 * (1 - stats.norm.cdf(abs((p1 - p2) / spread))))
