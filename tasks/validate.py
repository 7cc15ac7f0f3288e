"""Data validation with a Great Expectations 1.x suite defined in code.

This is the only module that touches Great Expectations, so an upgrade touches one file.
The suite checks structure (columns, numeric types, nulls, row count) always, and, once a
reference exists (the data accepted so far), value ranges and distribution bounds learned
from it: a batch whose mean moved by more than ``mean_tolerance`` reference standard
deviations, or whose spread changed by more than ``stdev_ratio``, is rejected. Gentler
drift passes here and is the monitor's job.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import pandas as pd
from prefect import task
from pydantic import BaseModel, Field

NUMERIC_TYPES = ["float64", "float32", "int64", "int32", "int16", "int8", "uint8", "uint16", "uint32", "uint64"]

CHECK_NAMES = {
    "expect_table_columns_to_match_set": "columns",
    "expect_table_row_count_to_be_between": "rows",
    "expect_column_values_to_be_in_type_list": "type",
    "expect_column_values_to_not_be_null": "nulls",
    "expect_column_values_to_be_between": "range",
    "expect_column_mean_to_be_between": "mean",
    "expect_column_stdev_to_be_between": "stdev",
}


class ValidationPolicy(BaseModel):
    """How strict validation is; distribution bounds are relative to the reference data."""

    range_margin: float = Field(
        0.5, ge=0, description="Allowed overshoot of the reference min/max, as a share of its range."
    )
    mean_tolerance: float = Field(
        0.5, gt=0, description="Allowed shift of a column mean, in reference standard deviations."
    )
    stdev_ratio: float = Field(
        2.0, gt=1, description="Allowed factor between a batch's and the reference's standard deviation."
    )
    min_rows: int = Field(2, ge=1, description="Fewest rows a batch may have.")


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
    """

    batch: str
    success: bool
    expectations: int
    failures: tuple[Failure, ...] = field(default_factory=tuple)
    reference_rows: int = 0

    @property
    def reason(self) -> str:
        if self.success:
            return "passed"
        return "; ".join(str(failure) for failure in self.failures)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reason": self.reason}


def learn_profile(reference: pd.DataFrame, columns: list[str]) -> ReferenceProfile:
    """Per-column min, max, mean and standard deviation of the reference data."""
    stats = {
        name: ColumnProfile(
            minimum=float(reference[name].min()),
            maximum=float(reference[name].max()),
            mean=float(reference[name].mean()),
            stdev=float(reference[name].std(ddof=1)),
        )
        for name in columns
    }
    return ReferenceProfile(rows=len(reference), columns=stats)


def _build_suite(columns: list[str], profile: ReferenceProfile | None, policy: ValidationPolicy) -> Any:
    import great_expectations as gx

    expectations: list[Any] = [
        gx.expectations.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=True),
        gx.expectations.ExpectTableRowCountToBeBetween(min_value=policy.min_rows),
    ]
    for name in columns:
        expectations += [
            gx.expectations.ExpectColumnValuesToBeInTypeList(column=name, type_list=NUMERIC_TYPES),
            gx.expectations.ExpectColumnValuesToNotBeNull(column=name),
        ]
        if profile is None or name not in profile.columns:
            continue
        stats = profile.columns[name]
        margin = policy.range_margin * (stats.maximum - stats.minimum)
        shift = policy.mean_tolerance * stats.stdev
        expectations += [
            gx.expectations.ExpectColumnValuesToBeBetween(
                column=name, min_value=stats.minimum - margin, max_value=stats.maximum + margin
            ),
            gx.expectations.ExpectColumnMeanToBeBetween(
                column=name, min_value=stats.mean - shift, max_value=stats.mean + shift
            ),
            gx.expectations.ExpectColumnStdevToBeBetween(
                column=name, min_value=stats.stdev / policy.stdev_ratio, max_value=stats.stdev * policy.stdev_ratio
            ),
        ]
    suite = gx.ExpectationSuite(name="batch")
    for expectation in expectations:
        suite.add_expectation(expectation)
    return suite


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
    if check == "range":
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


@task
def validate_batch(
    frame: pd.DataFrame,
    batch: str,
    columns: list[str],
    reference: pd.DataFrame | None,
    policy: ValidationPolicy,
) -> ValidationReport:
    """Validate a frame against the suite built from the reference (None: structural checks only).

    The caller quarantines a batch whose report is not a success.
    """
    profile = learn_profile(reference, columns) if reference is not None and len(reference) > 1 else None
    definition = _batch_definition()  # the suite needs a live context before it is built
    suite = _build_suite(columns, profile, policy)
    result = definition.get_batch(batch_parameters={"dataframe": frame}).validate(suite)
    failures = _root_causes([_describe(item) for item in result.results if not item.success])
    return ValidationReport(
        batch=batch,
        success=bool(result.success),
        expectations=len(result.results),
        failures=failures,
        reference_rows=profile.rows if profile else 0,
    )


def unreadable_report(batch: str, error: str) -> ValidationReport:
    """The report of a batch that could not even be parsed."""
    return ValidationReport(batch=batch, success=False, expectations=0, failures=(Failure("<file>", "parse", error),))
