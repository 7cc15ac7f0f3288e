"""The table a user really has: mixed types, gaps, ids, new categories, BOM/CRLF files, halves of one data set."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, load_wine

from mlops.spec import ModelSpec, load_spec, parse_spec
from tasks.dataset import DuplicateColumnsError, parse_table
from tasks.features import typed_features
from tasks.sample_data import tumours_frame
from tasks.validate import validate_batch
from tests.conftest import SHIPPED_SPECS, write_spec

TUMOURS = load_spec("tumours", SHIPPED_SPECS)


def check(frame: pd.DataFrame, reference: pd.DataFrame | None, spec: ModelSpec = TUMOURS):
    return validate_batch.fn(frame, "batch.csv", spec, reference)


@pytest.fixture(scope="module")
def halves() -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = tumours_frame()
    return frame.iloc[:300].reset_index(drop=True), frame.iloc[300:].reset_index(drop=True)


def test_a_mixed_type_batch_with_gaps_ids_and_ignored_columns_passes(halves) -> None:
    first, second = halves
    assert check(first, None).success
    report = check(second, first)
    assert report.success, report.reason
    assert check(second.drop(columns=["referral_note"]), first).success  # an ignored column may be absent


def test_a_new_category_is_reported_or_rejects_as_the_spec_says(halves, tmp_path) -> None:
    first, second = halves
    batch = second.assign(clinic=second["clinic"].where(second.index > 3, "harbour"))
    reported = check(batch, first)
    assert reported.success and "clinic: categories" in reported.reason and "harbour" in reported.reason
    strict = TUMOURS.with_sections(validation=TUMOURS.validation.model_copy(update={"new_categories": "reject"}))
    rejected = check(batch, first, strict)
    assert not rejected.success and [(f.column, f.check) for f in rejected.failures] == [("clinic", "categories")]


def test_missing_values_are_bounded_in_nullable_columns_and_refused_elsewhere(halves) -> None:
    first, second = halves
    gappy = second.copy()
    gappy.loc[gappy.index[: len(gappy) // 2], "mean smoothness"] = np.nan  # 50 % > max_missing 20 %
    gappy.loc[gappy.index[:2], "mean radius"] = np.nan  # not nullable
    report = check(gappy, first)
    assert {(f.column, f.check) for f in report.failures} == {("mean smoothness", "nulls"), ("mean radius", "nulls")}
    no_id = second.assign(patient_id=second["patient_id"].where(second.index > 0, None))
    assert ("patient_id", "nulls") in [(f.column, f.check) for f in check(no_id, first).failures]


def test_an_unknown_class_label_is_refused(halves) -> None:
    first, second = halves
    report = check(second.assign(diagnosis=second["diagnosis"].replace("benign", "unsure")), first)
    assert [(f.column, f.check) for f in report.failures] == [("diagnosis", "categories")]


def test_typed_features_fill_categories_and_read_flags_and_integers() -> None:
    frame = pd.DataFrame(
        {
            **{name: [1.0, np.nan] for name in TUMOURS.numeric_features},
            "repeat_biopsy": ["True", "no"],
            "lymph_nodes": pd.array([3, None], dtype="Int64"),
            "clinic": [None, "north"],
            "texture_grade": [1.0, 2.0],  # numbers read from a CSV: one category per whole number
        }
    )
    typed = typed_features(frame, TUMOURS)
    assert typed["repeat_biopsy"].tolist() == [1.0, 0.0]
    assert typed["lymph_nodes"].iloc[0] == 3.0 and np.isnan(typed["lymph_nodes"].iloc[1])
    assert typed["clinic"].tolist() == ["__missing__", "north"] and typed["texture_grade"].tolist() == ["1", "2"]
    assert list(typed.columns) == TUMOURS.feature_names


def regression_spec(tmp_path, name: str, frame: pd.DataFrame, target: str) -> ModelSpec:
    features = [{"name": c, "kind": "numeric"} for c in frame.columns if c != target]
    return parse_spec(write_spec(tmp_path, name, target={"column": target}, features=features, data={}))


def classifier_spec(tmp_path, name: str, frame: pd.DataFrame, target: str) -> ModelSpec:
    features = [{"name": c, "kind": "numeric"} for c in frame.columns if c != target]
    path = write_spec(
        tmp_path, name, task="multiclass", target={"column": target}, features=features, data={},
        training={"families": ["logistic_regression"]}, promotion={"primary": "roc_auc", "tolerances": {}},
    )  # fmt: skip
    return parse_spec(path)


def bundled(name: str) -> tuple[pd.DataFrame, str, bool]:
    loaders = {"diabetes": load_diabetes, "breast_cancer": load_breast_cancer, "wine": load_wine, "iris": load_iris}
    frame = loaders[name](as_frame=True).frame
    return frame, "target", name != "diabetes"


@pytest.mark.parametrize("name", ["diabetes", "breast_cancer", "wine", "iris"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_random_halves_of_one_data_set_both_pass(name: str, seed: int, tmp_path) -> None:
    frame, target, classes = bundled(name)
    spec = (classifier_spec if classes else regression_spec)(tmp_path, name.replace("_", "-"), frame, target)
    shuffled = frame.sample(frac=1, random_state=seed).reset_index(drop=True)
    first, second = shuffled.iloc[: len(frame) // 2], shuffled.iloc[len(frame) // 2 :]
    for batch, reference in ((second, first), (first, second)):
        report = validate_batch.fn(batch, "half", spec, reference)
        assert report.success, f"{name} seed {seed}: {report.reason}"


@pytest.mark.parametrize("name", ["diabetes", "breast_cancer", "wine", "iris"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quarters_arriving_one_after_another_each_pass(name: str, seed: int, tmp_path) -> None:
    """Small references (a quarter of wine is 45 rows) have seen little of the tails: still no rejection."""
    frame, target, classes = bundled(name)
    spec = (classifier_spec if classes else regression_spec)(tmp_path, name.replace("_", "-"), frame, target)
    quarters = np.array_split(frame.sample(frac=1, random_state=seed).reset_index(drop=True), 4)
    for index in range(1, 4):
        report = validate_batch.fn(quarters[index], "quarter", spec, pd.concat(quarters[:index]))
        assert report.success, f"{name} seed {seed} quarter {index}: {report.reason}"


def test_the_shifted_batches_are_still_rejected(tmp_path) -> None:
    frame, target, _ = bundled("diabetes")
    spec = regression_spec(tmp_path, "diabetes", frame, target)
    first, second = frame.iloc[::2], frame.iloc[1::2]
    shifted = second.assign(bmi=second["bmi"] + frame["bmi"].std())
    assert ("bmi", "mean") in [(f.column, f.check) for f in validate_batch.fn(shifted, "b", spec, first).failures]


CLEAN = "a,b,label\n1,x,yes\n2,y,no\n"


@pytest.mark.parametrize(
    "payload",
    [CLEAN.encode(), ("\ufeff" + CLEAN).encode(), CLEAN.replace("\n", "\r\n").encode(), (CLEAN + "\n").encode()],
    ids=["clean", "bom", "crlf", "trailing-empty-line"],
)
def test_bom_crlf_and_a_trailing_empty_line_read_as_the_clean_file(payload: bytes) -> None:
    pd.testing.assert_frame_equal(parse_table(payload, "batch.csv"), parse_table(CLEAN.encode(), "batch.csv"))


def test_duplicated_header_names_are_refused_with_the_reason() -> None:
    with pytest.raises(DuplicateColumnsError, match=r"duplicated column names \['a'\].*rename"):
        parse_table(b"a,b,a\n1,2,3\n", "twice.csv")
