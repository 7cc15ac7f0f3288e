"""Model specs: the shipped ones parse, the schema is current, and every bad spec is refused naming file and field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from mlops.spec import SCHEMA_FILE, SpecError, json_schema, list_specs, load_spec, parse_spec
from tests.conftest import SHIPPED_SPECS, write_spec


def test_the_shipped_specs_parse_and_the_published_schema_is_current() -> None:
    specs = {spec.name: spec for spec in list_specs(SHIPPED_SPECS)}
    assert specs["diabetes"].task.value == "regression" and specs["tumours"].task.value == "binary"
    tumours = specs["tumours"]
    assert tumours.ids == ["patient_id"] and tumours.categorical_features == ["clinic", "texture_grade"]
    assert json.loads((SHIPPED_SPECS / SCHEMA_FILE).read_text()) == json_schema(), "run python -m mlops.spec --schema"


def test_a_toml_spec_reads_the_same(tmp_path: Path) -> None:
    raw = yaml.safe_load((SHIPPED_SPECS / "diabetes.yaml").read_text())
    lines = [f'name = "{raw["name"]}"', 'task = "regression"', "[target]", 'column = "target"']
    lines += [line for f in raw["features"] for line in ("[[features]]", f'name = "{f["name"]}"')]
    (tmp_path / "diabetes.toml").write_text("\n".join(lines) + "\n")
    assert load_spec("diabetes", tmp_path).feature_names == load_spec("diabetes", SHIPPED_SPECS).feature_names


BAD = [
    ({"task": "ranking"}, "task: Input should be 'regression', 'binary' or 'multiclass'"),
    ({"training": {"families": ["logistic_regression"]}}, "do not fit task regression"),
    ({"training": {"families": ["ridge"], "pipeline": "pkg.mod:make"}}, "either families or a pipeline"),
    ({"features": [{"name": "age", "kind": "numeric"}, {"name": "age", "kind": "numeric"}]}, "repeated: ['age']"),
    ({"features": [{"name": "age", "kind": "colour"}]}, "features.0.kind"),
    ({"features": [{"name": "c", "kind": "categorical", "fill": "median"}]}, "does not apply to a categorical"),
    ({"features": [{"name": "x", "fill": "constant"}]}, "fill: constant needs a fill_value"),
    ({"ids": ["target"]}, "column 'target' is both in target and in ids"),
    ({"promotion": {"primary": "accuracy"}}, "is not a regression metric"),
    ({"unknown_field": 1}, "unknown_field: Extra inputs are not permitted"),
    ({"schedules": {"train": "0 3 * *"}}, "schedules.train: '0 3 * *' is not a cron schedule: five fields"),
    ({"validation": {"range_margin": -1}}, "validation.range_margin"),
    ({"rollout": {"steps": [50, 10]}}, "rollout.steps"),
]


@pytest.mark.parametrize(("change", "message"), BAD)
def test_a_bad_spec_is_refused_with_the_file_and_the_field(tmp_path: Path, change: dict, message: str) -> None:
    path = write_spec(tmp_path, "broken", **change)
    with pytest.raises(SpecError) as caught:
        parse_spec(path)
    assert str(path) in str(caught.value) and message in str(caught.value)


def test_unparseable_missing_and_misnamed_specs_are_refused(tmp_path: Path) -> None:
    (tmp_path / "torn.yaml").write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match=r"torn\.yaml: cannot be parsed"):
        load_spec("torn", tmp_path)
    with pytest.raises(SpecError, match=r"no spec for model 'absent'.*known models: torn"):
        load_spec("absent", tmp_path)
    path = write_spec(tmp_path, "houses")
    path.rename(tmp_path / "flats.yaml")
    with pytest.raises(SpecError, match="must match the file name"):
        load_spec("flats", tmp_path)


def test_a_flow_refuses_a_bad_spec_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.train import TrainParameters, resolve_spec
    from mlops.settings import Settings
    from mlops.spec import TrainingSpec

    write_spec(tmp_path, "houses")
    monkeypatch.setenv("MLOPS_MODELS_DIR", str(tmp_path))
    bad = TrainParameters(model="houses", training=TrainingSpec(families=["logistic_regression"]))
    with pytest.raises(
        SpecError, match=r"model houses with the run's parameters: .*training.families .* do not fit task regression"
    ):
        resolve_spec(bad, Settings())


def test_a_classifiers_shadow_phase_is_there_by_default_only_when_its_labels_are_compared() -> None:
    from mlops.policies import RolloutConfig

    compared, reported = RolloutConfig(bake_seconds=7), RolloutConfig(bake_seconds=7, compare_predictions=False)
    assert (compared.shadow_for(classifier=True), compared.shadow_for(classifier=False)) == (7, 0)
    assert reported.shadow_for(classifier=True) == 0  # label agreement would only be reported: nothing to wait for
    assert reported.model_copy(update={"shadow_seconds": 3.0}).shadow_for(classifier=True) == 3  # asked for: kept


@pytest.mark.parametrize("name", ["request_id", "prediction", "probability.benign"])
def test_an_id_named_like_a_collected_column_is_refused(tmp_path: Path, name: str) -> None:
    path = write_spec(tmp_path, "clash", base="tumours", ids=[name])
    with pytest.raises(SpecError, match=rf"ids \['{re.escape(name)}'\] clash with columns collected requests"):
        parse_spec(path)
