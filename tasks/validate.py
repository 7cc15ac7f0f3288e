"""Data validation with a Great Expectations 1.x suite defined in code.

This is the only module that touches Great Expectations, so an upgrade touches one file.
The suite checks structure (columns, numeric types, nulls, row count) always, and, once a
reference exists (the data accepted so far), value ranges and distribution bounds learned
from it: a batch whose mean moved by more than ``mean_tolerance`` reference standard
deviations, or whose spread changed by more than ``stdev_ratio``, is rejected. Gentler
drift passes here and is the monitor's job.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import pandas as pd
from prefect import task

from mlops.policies import ValidationPolicy
from mlops.spec import Kind, ModelSpec

NUMERIC_TYPES = [
    *("float64", "float32", "int64", "int32", "int16", "int8", "uint8", "uint16", "uint32", "uint64"),
    *("Float64", "Float32", "Int64", "Int32", "Int16", "Int8", "UInt8", "UInt16", "UInt32", "UInt64"),
]

BOOLEAN_TYPES = ["bool", "boolean", *NUMERIC_TYPES, "object", "str", "string"]

# Largest magnitude a number may have: its square (in a variance) stays far from float64's 1.8e308.
MAX_MAGNITUDE = 1e150
CHECK_NAMES = {
    "expect_column_values_to_be_in_set": "categories",
    "expect_table_columns_to_match_set": "columns",
    "expect_table_row_count_to_be_between": "rows",
    "expect_column_values_to_be_in_type_list": "type",
    "expect_column_values_to_not_be_null": "nulls",
    "expect_column_values_to_be_between": "range",
    "expect_column_mean_to_be_between": "mean",
    "expect_column_stdev_to_be_between": "stdev",
}


@dataclass(frozen=True)
class ColumnProfile:
    """Reference statistics of one column."""

    minimum: float
    maximum: float
    mean: float
    stdev: float


@dataclass(frozen=True)
class ReferenceProfile:
    """What the validation suite's bounds are learned from."""

    rows: int
    columns: dict[str, ColumnProfile]


@dataclass(frozen=True)
class Failure:
    """One failed check: which column, which check, what was seen."""

    column: str
    check: str
    detail: str

    def __str__(self) -> str:
        return f"{self.column}: {self.check} ({self.detail})"


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of validating one batch.

    Attributes:
        batch: Name of the batch.
        success: Whether every expectation held.
        expectations: How many expectations ran.
        failures: The failed checks, each naming its column.
        reference_rows: Rows of the reference the bounds came from (0: structural checks only).
        warnings: Checks that failed without rejecting the batch (new categories, when the policy reports them).
    """

    batch: str
    success: bool
    expectations: int
    failures: tuple[Failure, ...] = field(default_factory=tuple)
    reference_rows: int = 0
    warnings: tuple[Failure, ...] = field(default_factory=tuple)

    @property
    def reason(self) -> str:
        if self.success:
            return "passed" + (f" with warnings: {'; '.join(map(str, self.warnings))}" if self.warnings else "")
        return "; ".join(str(failure) for failure in self.failures)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reason": self.reason}


def learn_profile(reference: pd.DataFrame, columns: list[str]) -> ReferenceProfile:
    """Per-column min, max, mean and standard deviation of the reference data (missing values skipped)."""
    stats = {}
    for name in columns:
        values = pd.to_numeric(reference[name], errors="coerce").dropna()
        if len(values) > 1:
            profile = ColumnProfile(
                minimum=float(values.min()),
                maximum=float(values.max()),
                mean=float(values.mean()),
                stdev=float(values.std(ddof=1)),
            )
            if all(math.isfinite(value) for value in asdict(profile).values()):  # a bound is never infinite
                stats[name] = profile
    return ReferenceProfile(rows=len(reference), columns=stats)


def learn_categories(reference: pd.DataFrame, columns: list[str]) -> dict[str, list[Any]]:
    """The values each categorical column took in accepted data (as stored: strings, numbers or flags)."""
    return {name: sorted(reference[name].dropna().unique().tolist(), key=str) for name in columns}


def _distribution(
    gx: Any, name: str, stats: ColumnProfile, policy: ValidationPolicy, rows: int, reference_rows: int
) -> list[Any]:
    """Ranges in two tiers and distribution bounds.

    A reference of a few dozen rows has seen little of a distribution's tails, so values just past its
    range are tolerated up to ``range_mostly`` of the batch (and always one of them); values far past it
    (``range_hard_margin`` ranges) reject the batch even alone: unit and typing errors, not tails.
    """
    spread = stats.maximum - stats.minimum
    margin, hard = policy.range_margin * spread, policy.range_hard_margin * spread
    noise = policy.mean_noise_z * stats.stdev * (1 / max(rows, 1) + 1 / max(reference_rows, 1)) ** 0.5
    shift = max(policy.mean_tolerance * stats.stdev, noise)
    mostly = min(policy.range_mostly, 1 - 1 / max(rows, 1))
    return [
        gx.expectations.ExpectColumnValuesToBeBetween(
            column=name, min_value=stats.minimum - margin, max_value=stats.maximum + margin, mostly=mostly
        ),
        gx.expectations.ExpectColumnValuesToBeBetween(
            column=name, min_value=stats.minimum - hard, max_value=stats.maximum + hard
        ),
        gx.expectations.ExpectColumnMeanToBeBetween(
            column=name, min_value=stats.mean - shift, max_value=stats.mean + shift
        ),
        gx.expectations.ExpectColumnStdevToBeBetween(
            column=name, min_value=stats.stdev / policy.stdev_ratio, max_value=stats.stdev * policy.stdev_ratio
        ),
    ]


def _magnitude(gx: Any, name: str) -> Any:
    """Every batch, the first included: no number so large that squaring it overflows (means, spreads and the
    bounds learned from them would become infinite and block every later batch)."""
    return gx.expectations.ExpectColumnValuesToBeBetween(column=name, min_value=-MAX_MAGNITUDE, max_value=MAX_MAGNITUDE)


def _build_suite(
    spec: ModelSpec,
    present: list[str],
    profile: ReferenceProfile | None,
    categories: dict[str, list[Any]],
    with_target: bool,
    rows: int,
) -> Any:
    """The batch suite of a spec: structure always, learned bounds once a reference exists."""
    import great_expectations as gx

    policy = spec.validation
    required = [*spec.ids, *spec.feature_names, *([spec.target.column] if with_target else [])]
    allowed = required + [name for name in spec.ignore if name in present]
    expectations: list[Any] = [
        gx.expectations.ExpectTableColumnsToMatchSet(column_set=allowed, exact_match=True),
        gx.expectations.ExpectTableRowCountToBeBetween(min_value=policy.min_rows),
    ]
    for name in spec.ids:
        expectations.append(gx.expectations.ExpectColumnValuesToNotBeNull(column=name))
    for feature in spec.features:
        name = feature.name
        if feature.kind is Kind.BOOLEAN:
            expectations.append(gx.expectations.ExpectColumnValuesToBeInTypeList(column=name, type_list=BOOLEAN_TYPES))
        elif not feature.is_categorical:
            expectations.append(gx.expectations.ExpectColumnValuesToBeInTypeList(column=name, type_list=NUMERIC_TYPES))
            expectations.append(_magnitude(gx, name))
        mostly = 1 - policy.max_missing if feature.nullable else 1.0
        if mostly > 0:
            expectations.append(gx.expectations.ExpectColumnValuesToNotBeNull(column=name, mostly=mostly))
        if feature.is_categorical and name in categories:
            expectations.append(gx.expectations.ExpectColumnValuesToBeInSet(column=name, value_set=categories[name]))
        elif profile is not None and name in profile.columns and feature.kind in (Kind.NUMERIC, Kind.INTEGER):
            expectations += _distribution(gx, name, profile.columns[name], policy, rows, profile.rows)
    if with_target:
        target = spec.target.column
        expectations.append(gx.expectations.ExpectColumnValuesToNotBeNull(column=target))
        if not spec.task.is_classification:
            expectations.append(
                gx.expectations.ExpectColumnValuesToBeInTypeList(column=target, type_list=NUMERIC_TYPES)
            )
            expectations.append(_magnitude(gx, target))
            if profile is not None and target in profile.columns:
                expectations += _distribution(gx, target, profile.columns[target], policy, rows, profile.rows)
        elif spec.target.classes is not None:
            expectations.append(
                gx.expectations.ExpectColumnValuesToBeInSet(column=target, value_set=list(spec.target.classes))
            )
    # Given whole: add_expectation compares each new one with all before it to drop near-duplicates (a quarter of a
    # batch's validation); the spec gives each column one role, so the list above holds none.
    return gx.ExpectationSuite(name="batch", expectations=expectations)


def _exception_message(info: dict[str, Any]) -> str | None:
    """GX reports exceptions either flat or keyed by the metric that raised."""
    candidates = [info, *(value for value in info.values() if isinstance(value, dict))]
    for candidate in candidates:
        if candidate.get("raised_exception"):
            lines = str(candidate.get("exception_message") or "error").splitlines() or ["error"]
            return lines[0][:200]
    return None


def _root_causes(failures: list[Failure]) -> tuple[Failure, ...]:
    """Drop failures that only follow from another one (checks on a missing or non-numeric column)."""
    missing = {name.strip() for failure in failures if failure.check == "columns" for name in failure.column.split(",")}
    non_numeric = {failure.column for failure in failures if failure.check == "type" and failure.column not in missing}
    kept = [
        failure
        for failure in failures
        if failure.check in ("columns", "rows")
        or (failure.column not in missing and (failure.check == "type" or failure.column not in non_numeric))
    ]
    order = {"columns": 0, "rows": 1, "type": 2}
    return tuple(sorted(kept, key=lambda failure: order.get(failure.check, 3)))


def _describe(result: Any) -> Failure:
    config = result.expectation_config
    check = CHECK_NAMES.get(config.type, config.type)
    column = config.kwargs.get("column") or "<table>"
    outcome = result.result or {}
    message = _exception_message(result.exception_info or {})
    if message is not None:
        return Failure(column=column, check=check, detail=f"could not be checked: {message}")
    if check == "columns":
        mismatched = outcome.get("details", {}).get("mismatched", {})
        parts = [f"{kind} {sorted(names)}" for kind, names in mismatched.items() if names]
        missing = mismatched.get("missing") or []
        column = ", ".join(sorted(missing)) if missing else column
        return Failure(column=column, check=check, detail="; ".join(parts) or "columns differ")
    if "observed_value" in outcome:
        bounds = f"[{config.kwargs.get('min_value')}, {config.kwargs.get('max_value')}]"
        return Failure(
            column=column, check=check, detail=f"observed {outcome['observed_value']}, expected within {bounds}"
        )
    examples = outcome.get("partial_unexpected_list", [])[:5]
    count = outcome.get("unexpected_count")
    detail = f"{count} unexpected value(s), e.g. {examples}"
    if check == "range" and config.kwargs.get("max_value") == MAX_MAGNITUDE:
        check = "magnitude"
        detail += f"; beyond ±{MAX_MAGNITUDE:g}, too large to compute statistics on (a unit or typing error?)"
    elif check == "range":
        detail += f"; expected within [{config.kwargs.get('min_value'):.4g}, {config.kwargs.get('max_value'):.4g}]"
    return Failure(column=column, check=check, detail=detail)


@lru_cache(maxsize=1)
def _batch_definition() -> Any:
    """One ephemeral context per process: each new one costs time and a temporary folder."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("batches").add_dataframe_asset(name="batch")
    return asset.add_batch_definition_whole_dataframe("whole")


def _plain_numbers(column: pd.Series) -> pd.Series:
    """pandas' nullable numbers (Int64, Float64, as Parquet gives them) as float64: GX checks numpy types."""
    extension = isinstance(column.dtype, pd.api.extensions.ExtensionDtype)
    if extension and pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        return column.astype("float64")
    return column


@task
def validate_batch(
    frame: pd.DataFrame,
    batch: str,
    spec: ModelSpec,
    reference: pd.DataFrame | None,
    with_target: bool = True,
) -> ValidationReport:
    """Validate a frame by the model's spec against bounds learned from the reference (None: structural checks only).

    A category never seen in the reference is a warning or a failure, as the spec's validation policy says.
    The caller quarantines a batch whose report is not a success.
    """
    numeric = [f.name for f in spec.features if f.kind in (Kind.NUMERIC, Kind.INTEGER)]
    if with_target and not spec.task.is_classification:
        numeric.append(spec.target.column)
    profile: ReferenceProfile | None = None
    categories: dict[str, list[Any]] = {}
    if reference is not None and len(reference) > 1:
        profile = learn_profile(reference, [c for c in numeric if c in reference])
        categories = learn_categories(reference, [c for c in spec.categorical_features if c in reference])
    frame = frame.apply(_plain_numbers)
    definition = _batch_definition()  # the suite needs a live context before it is built
    suite = _build_suite(spec, list(frame.columns), profile, categories, with_target, len(frame))
    result = definition.get_batch(batch_parameters={"dataframe": frame}).validate(suite)
    found = _root_causes([_describe(item) for item in result.results if not item.success])
    report_only = spec.validation.new_categories == "report"
    warnings = tuple(f for f in found if f.check == "categories" and report_only and f.column != spec.target.column)
    failures = tuple(f for f in found if f not in warnings)
    return ValidationReport(
        batch=batch,
        success=not failures,
        expectations=len(result.results),
        failures=failures,
        reference_rows=profile.rows if profile else 0,
        warnings=warnings,
    )


def unreadable_report(batch: str, error: str) -> ValidationReport:
    """The report of a batch that could not even be parsed."""
    return ValidationReport(batch=batch, success=False, expectations=0, failures=(Failure("<file>", "parse", error),))
