"""The fast drift decision against the exact statistic and against Evidently's own per-column verdict."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wasserstein_distance

from tasks.drift import ReferenceProfile, decide

COLUMNS = [f"f{i}" for i in range(6)]


def frames(rows: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    reference = pd.DataFrame(rng.normal(size=(20_000, 6)) * [1, 5, 1, 1, 2, 1], columns=COLUMNS)
    current = pd.DataFrame(rng.normal(size=(rows, 6)) * [1, 5, 1, 1, 2, 1], columns=COLUMNS)
    current["f1"] += 2.5  # 0.5 sd: drifted
    current["f3"] = current["f3"] * 1.6  # wider: drifted
    current["f5"] = rng.exponential(size=rows)  # another shape: drifted
    return reference, current


def test_scores_match_the_exact_normed_wasserstein_distance() -> None:
    reference, current = frames(50_000, seed=1)
    decision = decide(ReferenceProfile.from_frame(reference), current)
    for column in COLUMNS:
        exact = wasserstein_distance(reference[column], current[column]) / np.std(reference[column])
        assert decision.scores[column] == pytest.approx(exact, abs=0.005), column
    assert decision.drifted == ["f1", "f3", "f5"] and decision.share == 0.5


def test_sampling_a_large_window_keeps_the_verdict() -> None:
    reference, current = frames(300_000, seed=2)
    profile = ReferenceProfile.from_json(ReferenceProfile.from_frame(reference).to_json())
    full = decide(profile, current, max_rows=len(current))
    sampled = decide(profile, current, max_rows=20_000)
    assert sampled.sampled == 20_000 and sampled.rows == 300_000
    assert sampled.drifted == full.drifted
    assert max(abs(sampled.scores[c] - full.scores[c]) for c in COLUMNS) < 0.02


def test_the_verdict_is_evidently_s() -> None:
    from evidently import Report
    from evidently.presets import DataDriftPreset

    reference, current = frames(30_000, seed=3)
    metrics = Report([DataDriftPreset()]).run(current, reference).dict()["metrics"]
    evidently = {
        m["config"]["column"]: float(m["value"]) for m in metrics if m["metric_name"].startswith("ValueDrift(")
    }
    assert all("Wasserstein" in m["metric_name"] for m in metrics if m["metric_name"].startswith("ValueDrift("))
    decision = decide(ReferenceProfile.from_frame(reference), current)
    assert sorted(c for c, score in evidently.items() if score > 0.1) == decision.drifted
    for column in COLUMNS:
        assert decision.scores[column] == pytest.approx(evidently[column], abs=0.005)


def test_bad_current_data_is_named() -> None:
    reference, current = frames(100, seed=4)
    profile = ReferenceProfile.from_frame(reference)
    with pytest.raises(ValueError, match="lacks the reference's column"):
        decide(profile, current.drop(columns=["f2"]))
    with pytest.raises(ValueError, match="no current rows"):
        decide(profile, current.iloc[:0])


def mixed(rows: int, seed: int, shifted: bool) -> pd.DataFrame:
    """Numbers, a few-valued count, a flag, and two text categories (one with gaps); ``shifted`` moves some."""
    rng = np.random.default_rng(seed)
    grades = ["low", "mid", "high", "very high"]
    frame = pd.DataFrame(
        {
            "size": rng.normal(10, 2, rows),
            "visits": rng.integers(0, 4, rows).astype(float),
            "urgent": rng.random(rows) < 0.3,
            "grade": rng.choice(grades, rows, p=[0.4, 0.3, 0.2, 0.1]),
            "clinic": rng.choice(["north", "south", None], rows, p=[0.5, 0.4, 0.1]),
        }
    )
    if shifted:
        frame["size"] += 1.5
        frame["grade"] = rng.choice(grades, rows, p=[0.1, 0.2, 0.3, 0.4])
        frame["urgent"] = rng.random(rows) < 0.6
    return frame


@pytest.mark.parametrize("reference_rows", [800, 4000], ids=["small-reference", "large-reference"])
def test_mixed_columns_are_judged_by_evidently_s_statistic_for_their_kind(
    reference_rows: int, tmp_path: pytest.TempPathFactory
) -> None:
    from tasks.monitoring import drift_report

    categorical = ["grade", "clinic"]
    reference = mixed(reference_rows, seed=5, shifted=False)
    current = mixed(3000, seed=6, shifted=True)
    decision = decide(ReferenceProfile.from_frame(reference, categorical=categorical), current)
    assert {"size", "urgent", "grade"} <= set(decision.drifted) and "clinic" not in decision.drifted
    small = reference_rows <= 1000
    assert decision.methods == (
        {"size": "ks", "visits": "chisquare", "urgent": "z", "grade": "chisquare", "clinic": "z"}
        if small
        else {"size": "wasserstein", **dict.fromkeys(["visits", "urgent", "grade", "clinic"], "jensenshannon")}
    )
    columns = list(reference.columns)
    evidently = drift_report.fn(reference, current, columns, categorical, 5000, tmp_path / "report.html")
    assert sorted(evidently) == sorted(decision.drifted)


def test_a_category_the_reference_never_saw_drifts_and_text_survives_json() -> None:
    reference = mixed(600, seed=7, shifted=False)
    current = mixed(400, seed=8, shifted=False)
    current.loc[:150, "grade"] = "unheard of"
    profile = ReferenceProfile.from_json(
        ReferenceProfile.from_frame(reference, categorical=["grade", "clinic"]).to_json()
    )
    decision = decide(profile, current)
    assert decision.drifted == ["grade"] and decision.scores["grade"] < 1e-6
    assert decision.rule("grade") == "chisquare p < 0.05"


def test_a_small_change_on_a_large_window_is_drift_by_the_p_value_but_not_material() -> None:
    grades = ["a", "b", "c", "d"]
    reference = pd.DataFrame({"grade": np.repeat(grades, 250)})  # 1000 rows: Evidently's chi-square
    current = pd.DataFrame({"grade": np.repeat(grades, [1350, 1250, 1250, 1150])})  # shares 0.27 .. 0.23
    profile = ReferenceProfile.from_frame(reference, categorical=["grade"])
    decision = decide(profile, current)
    assert decision.drifted == ["grade"] and decision.methods["grade"] == "chisquare"
    assert decision.effects["grade"] < 0.05 and not decision.material("grade")
    moved = decide(profile, pd.DataFrame({"grade": np.repeat(grades, [2500, 1000, 1000, 500])}))
    assert moved.material("grade")
