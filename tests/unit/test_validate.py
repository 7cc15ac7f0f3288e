"""The GX suite: good data passes, each kind of bad data is rejected naming its column."""

import numpy as np
import pandas as pd
import pytest

from mlops.spec import load_spec
from tasks.validate import unreadable_report, validate_batch
from tests.conftest import SHIPPED_SPECS

SPEC = load_spec("diabetes", SHIPPED_SPECS)
COLUMNS = [*SPEC.feature_names, SPEC.target.column]


@pytest.fixture
def reference(batches: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(batches[:2], ignore_index=True)


@pytest.fixture
def good(batches: list[pd.DataFrame]) -> pd.DataFrame:
    return batches[2].copy()


def check(frame: pd.DataFrame, reference: pd.DataFrame | None):
    return validate_batch.fn(frame, "batch.csv", SPEC, reference)


def test_good_batch_passes(good: pd.DataFrame, reference: pd.DataFrame) -> None:
    report = check(good, reference)
    assert report.success, report.reason
    assert report.reference_rows == len(reference)
    assert report.expectations == 2 + 7 * len(COLUMNS)  # per column: type, magnitude, nulls, 4 learned bounds


def test_first_batch_gets_structural_checks_only(good: pd.DataFrame) -> None:
    report = check(good, None)
    assert report.success and report.reference_rows == 0
    assert report.expectations == 2 + 3 * len(COLUMNS)  # per column: type, magnitude, nulls


def test_missing_column_is_named(good: pd.DataFrame, reference: pd.DataFrame) -> None:
    report = check(good.drop(columns=["bmi"]), reference)
    assert not report.success
    assert [(f.column, f.check) for f in report.failures] == [("bmi", "columns")]
    assert "missing ['bmi']" in report.reason


def test_unexpected_column_is_named(good: pd.DataFrame, reference: pd.DataFrame) -> None:
    report = check(good.assign(extra=1.0), reference)
    assert not report.success and "unexpected ['extra']" in report.reason


def test_wrong_dtype_is_named(good: pd.DataFrame, reference: pd.DataFrame) -> None:
    report = check(good.assign(bp=good["bp"].map(lambda v: f"{v} mmHg")), reference)
    assert not report.success
    assert [(f.column, f.check) for f in report.failures] == [("bp", "type")]


def test_nulls_are_named(good: pd.DataFrame, reference: pd.DataFrame) -> None:
    frame = good.copy()
    frame.loc[frame.index[:3], "s3"] = np.nan
    report = check(frame, reference)
    assert not report.success
    assert ("s3", "nulls") in [(f.column, f.check) for f in report.failures]
    assert {f.column for f in report.failures} == {"s3"}


def test_out_of_range_values_are_named(good: pd.DataFrame, reference: pd.DataFrame) -> None:
    frame = good.copy()
    frame.loc[frame.index[0], "age"] = 250.0  # one row, but two ranges past the reference's (19-79): an error
    report = check(frame, reference)
    assert not report.success
    assert ("age", "range") in [(f.column, f.check) for f in report.failures]
    assert "250.0" in report.reason


def test_shifted_distribution_is_named(good: pd.DataFrame, reference: pd.DataFrame) -> None:
    frame = good.assign(bmi=good["bmi"] + reference["bmi"].std())
    report = check(frame, reference)
    assert not report.success
    assert ("bmi", "mean") in [(f.column, f.check) for f in report.failures]
    assert {f.column for f in report.failures} == {"bmi"}


def test_changed_spread_is_named(good: pd.DataFrame, reference: pd.DataFrame) -> None:
    mean = good["s5"].mean()
    frame = good.assign(s5=mean + (good["s5"] - mean) * 0.2)
    report = check(frame, reference)
    assert ("s5", "stdev") in [(f.column, f.check) for f in report.failures]


def test_empty_batch_is_rejected(good: pd.DataFrame, reference: pd.DataFrame) -> None:
    report = check(good.iloc[:0], reference)
    assert not report.success and ("<table>", "rows") in [(f.column, f.check) for f in report.failures]


def test_unreadable_report_names_the_file() -> None:
    report = unreadable_report("x.csv", "x.csv: cannot be parsed: boom")
    assert not report.success and report.reason == "<file>: parse (x.csv: cannot be parsed: boom)"


def test_a_value_too_large_for_statistics_is_rejected_even_in_the_first_batch(
    good: pd.DataFrame, reference: pd.DataFrame
) -> None:
    """1e308 in a first batch used to be accepted; its spread became inf and every later batch was quarantined with
    'stdev expected within [inf, inf]'."""
    poisoned = good.copy()
    poisoned.loc[poisoned.index[0], "bmi"] = 1e308
    for ref in (None, reference):
        report = check(poisoned, ref)
        assert not report.success
        assert report.failures[0].column == "bmi" and report.failures[0].check == "magnitude", report.reason
        assert "too large to compute statistics on" in report.reason
    # and were such a value in the reference already, no bound learned from it is infinite: later batches pass
    tainted = reference.copy()
    tainted.loc[tainted.index[0], "bmi"] = 1e308
    later = check(good, tainted)
    assert later.success, later.reason
    assert "inf" not in later.reason
