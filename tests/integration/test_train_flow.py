"""The training flow against a real MLflow server (SQLite) and Prefect's test harness."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from flows.train import DataRejectedError, TrainParameters, train_flow
from mlops.process import free_port
from mlops.settings import Settings
from mlops.spec import TrainingSpec
from tasks.export import ExportConfig, ParityError
from tasks.ingest import accepted_frame
from tasks.registry import PromotionError, promote
from tasks.sample_data import land_batches
from tasks.serving_bundle import fetch_bundle
from tasks.train import Candidate, TrainingSet, log_diagnostics

LINEAGE_TAGS = {
    "dataset_digest",
    "dataset_uri",
    "git_commit",
    "prefect_flow_run_id",
    "validation_status",
    "validation_summary",
    "training_key",
    "run_id",
    "metrics",
    "metrics_vs_champion",
}
# A ridge this regularised predicts little more than the mean: a champion any real model beats.
WEAK = TrainParameters(training=TrainingSpec(families=["ridge"], grid={"model__alpha": [10_000.0]}))
DEFAULT = TrainParameters()


def registry(settings: Settings) -> MlflowClient:
    return MlflowClient(tracking_uri=settings.tracking_uri)


def aliases(settings: Settings) -> dict[str, str]:
    return dict(registry(settings).get_registered_model(settings.model_name).aliases)


def versions(settings: Settings) -> list[str]:
    found = registry(settings).search_model_versions(f"name = '{settings.model_name}'")
    return sorted(version.version for version in found)


def test_first_champion_then_better_challenger_with_lineage(stack: Settings) -> None:
    land_batches(stack.landing_for(), [0, 1, 2, 3])
    first = train_flow(WEAK)
    assert (first.status, first.version, first.alias) == ("registered", "1", "champion")
    assert aliases(stack) == {"champion": "1"}
    assert len(first.accepted) == 4

    second = train_flow(DEFAULT)
    assert (second.status, second.version, second.alias) == ("registered", "2", "challenger")
    assert aliases(stack) == {"champion": "1", "challenger": "2"}
    tags = registry(stack).get_model_version(stack.model_name, "2").tags
    assert set(tags) >= LINEAGE_TAGS
    assert tags["validation_status"] == "passed"
    columns = len(stack.spec().feature_names) + 1  # the first batch had no reference: structural checks only
    expectations = (2 + 3 * columns) + 3 * (
        2 + 7 * columns
    )  # per column: type, magnitude, nulls, 2 ranges, mean, stdev
    assert tags["validation_summary"] == f"passed: 4 batch(es), {expectations} expectations"
    assert len(tags["dataset_digest"]) == 64
    assert tags["prefect_flow_run_id"] not in ("", "none")
    comparison = json.loads(tags["metrics_vs_champion"])
    assert comparison["champion_version"] == "1" and comparison["better"] is True
    assert comparison["candidate"]["rmse"] < comparison["champion"]["rmse"]

    run = registry(stack).get_run(second.run_id)
    assert {"rmse", "mae", "r2", "champion_rmse"} <= set(run.data.metrics)
    assert run.data.params["family"] == "ridge" and run.data.params["seed"] == "42"
    assert run.inputs.dataset_inputs and run.inputs.dataset_inputs[0].dataset.digest == tags["dataset_digest"][:36]
    artifacts = {item.path for item in registry(stack).list_artifacts(second.run_id)}
    assert {"feature_importance.png", "comparison.json", "environment", "validation", "onnx"} <= artifacts
    assert_exported(stack, "2", second.run_id)

    # diagnostics that cannot be made never undo the decision: said on the run, not raised
    frame = accepted_frame(stack.data_for())
    assert frame is not None
    other = registry(stack).create_run(run.info.experiment_id).info.run_id
    lost = Candidate(other, run.info.experiment_id, "models:/no-such-model/1", "m-0", "ridge", {}, {})
    log_diagnostics.fn(lost, TrainingSet(frame, stack.spec()), stack.tracking_uri)
    assert registry(stack).get_run(other).data.tags["diagnostics"].startswith("failed: ")
    # and where MLflow cannot be reached even for the tag, the log line is what remains
    log_diagnostics.fn(lost, TrainingSet(frame, stack.spec()), f"http://127.0.0.1:{free_port()}")


def assert_exported(settings: Settings, version: str, run_id: str) -> None:
    """The version carries its ONNX export: sha256, parity within tolerance, latency, and a bundle that matches."""
    tags = registry(settings).get_model_version(settings.model_name, version).tags
    assert tags["onnx_parity"] == "passed"
    assert float(tags["onnx_parity_max_abs_error"]) <= float(tags["onnx_parity_tolerance"])
    assert tags["onnx_uri"] == f"runs:/{run_id}/onnx"
    for engine in ("onnx", "sklearn"):
        for rows in (1, 100, 10_000):
            assert float(tags[f"latency_us.{engine}.{rows}"]) > 0
    with tempfile.TemporaryDirectory() as scratch:
        model_file, metadata = fetch_bundle(
            settings.tracking_uri, f"models:/{settings.model_name}/{version}", Path(scratch)
        )
        assert hashlib.sha256(model_file.read_bytes()).hexdigest() == tags["onnx_sha256"] == metadata.sha256
        assert (metadata.name, metadata.version) == (settings.model_name, version)
        assert list(metadata.features) == list(settings.spec().feature_names)


def test_worse_candidate_registers_nothing_and_rerun_is_idempotent(stack: Settings) -> None:
    land_batches(stack.landing_for(), [0, 1, 2, 3])
    assert train_flow(DEFAULT).alias == "champion"
    worse = train_flow(WEAK)
    assert worse.status == "kept" and worse.version is None
    assert worse.message.startswith("champion kept: version 1 stays; rmse ")
    assert registry(stack).get_run(worse.run_id).data.tags["outcome"] == "kept"

    again = train_flow(DEFAULT)
    assert again.status == "unchanged" and again.version == "1"
    assert versions(stack) == ["1"]
    assert aliases(stack) == {"champion": "1"}


def test_rejected_batch_is_quarantined_and_nothing_is_trained(stack: Settings) -> None:
    land_batches(stack.landing_for(), [0, 1])
    train_flow(DEFAULT)
    land_batches(stack.landing_for(), [2])
    landed = Path(stack.landing_for()) / "diabetes_batch_002.csv"
    lines = landed.read_text().splitlines()
    header = lines[0].split(",")
    bmi = header.index("bmi")
    broken = [lines[0]] + [",".join(v if i != bmi else "" for i, v in enumerate(row.split(","))) for row in lines[1:]]
    landed.write_text("\n".join(broken) + "\n")
    original = landed.read_bytes()

    with pytest.raises(DataRejectedError, match=r"diabetes_batch_002.csv quarantined at .*bmi: nulls"):
        train_flow(DEFAULT)
    quarantined = Path(stack.data_for()) / "quarantine" / "diabetes_batch_002.csv"
    assert hashlib.sha256(quarantined.read_bytes()).digest() == hashlib.sha256(original).digest()
    report = json.loads(Path(str(quarantined) + ".validation.json").read_text())
    assert report["success"] is False and report["failures"][0]["column"] == "bmi"
    assert not landed.exists()
    assert versions(stack) == ["1"] and aliases(stack) == {"champion": "1"}


def test_a_second_training_of_the_model_at_once_is_refused_before_it_claims_a_batch(stack: Settings) -> None:
    from tasks.training_lock import TrainingBusyError, training_lock

    land_batches(stack.landing_for(), [0])
    landed = sorted(path.name for path in Path(stack.landing_for()).iterdir())
    busy = rf"another training run of {stack.model_name} holds its batches \(flow run first-run, pid \d+"
    with (
        training_lock(stack.data_for(), stack.model_name, "flow run first-run"),  # as a run in progress holds it
        pytest.raises(TrainingBusyError, match=busy),
    ):
        train_flow(DEFAULT)
    assert sorted(path.name for path in Path(stack.landing_for()).iterdir()) == landed  # nothing claimed
    # A run whose process died while the tracking server was down stays RUNNING; the next run ends it.
    experiment = registry(stack).get_experiment_by_name(stack.spec().experiment)
    experiment_id = (
        experiment.experiment_id if experiment else registry(stack).create_experiment(stack.spec().experiment)
    )
    abandoned = registry(stack).create_run(experiment_id, tags={"training_key": "k-of-a-dead-run"}).info.run_id
    assert train_flow(DEFAULT).status == "registered"  # free again once the first run ended
    ended = registry(stack).get_run(abandoned)
    assert ended.info.status == "FAILED" and "ended by the next training run" in ended.data.tags["ended_by"]


def test_promote_moves_champion_and_records_why(stack: Settings) -> None:
    land_batches(stack.landing_for(), [0, 1, 2, 3])
    train_flow(WEAK)
    train_flow(DEFAULT)
    promotion = promote.fn(stack.tracking_uri, stack.model_name, "2", "beat champion offline", actor="alice")
    assert (promotion.version, promotion.previous) == ("2", "1")
    assert aliases(stack) == {"champion": "2"}
    tags = registry(stack).get_model_version(stack.model_name, "2").tags
    assert (tags["promoted_by"], tags["promotion_reason"], tags["previous_champion"]) == (
        "alice",
        "beat champion offline",
        "1",
    )
    assert registry(stack).get_model_version(stack.model_name, "1").tags["superseded_by"] == "2"


def test_promote_refuses_missing_and_unvalidated_versions(stack: Settings) -> None:
    land_batches(stack.landing_for(), [0, 1, 2, 3])
    train_flow(WEAK)
    train_flow(DEFAULT)
    with pytest.raises(PromotionError, match="has no version '9'"):
        promote.fn(stack.tracking_uri, stack.model_name, "9", "typo")
    registry(stack).set_model_version_tag(stack.model_name, "2", "validation_status", "failed")
    with pytest.raises(PromotionError, match="validation status is failed"):
        promote.fn(stack.tracking_uri, stack.model_name, "2", "should not happen")
    assert aliases(stack) == {"champion": "1", "challenger": "2"}


@pytest.mark.parametrize("family", ["random_forest", "hist_gradient_boosting"])
def test_tree_families_train_and_register(stack: Settings, family: str) -> None:
    land_batches(stack.landing_for(), [0, 1, 2, 3])
    outcome = train_flow(TrainParameters(training=TrainingSpec(families=[family])))
    assert outcome.status == "registered" and outcome.alias == "champion"
    assert registry(stack).get_model_version(stack.model_name, "1").tags["model_family"] == family
    import mlflow

    model = mlflow.sklearn.load_model(f"models:/{stack.model_name}@champion")
    assert type(model.steps[-1][1]).__name__.lower().startswith(family.split("_")[0])
    assert_exported(stack, "1", outcome.run_id or "")


def test_an_export_that_fails_parity_blocks_registration(stack: Settings) -> None:
    land_batches(stack.landing_for(), [0, 1, 2, 3])
    strict = TrainParameters(
        training=TrainingSpec(families=["random_forest"], grid={"model__max_depth": [4]}),
        export=ExportConfig(parity_tolerance=1e-12),
    )
    with pytest.raises(ParityError, match=r"ONNX export of run .* blocked: parity FAILED"):
        train_flow(strict)
    assert versions(stack) == []
    experiment = registry(stack).get_experiment_by_name(stack.spec().experiment)
    assert experiment is not None
    [run] = registry(stack).search_runs([experiment.experiment_id])
    assert run.data.tags["onnx_parity"] == "failed"
    assert "outcome" not in run.data.tags


def test_unknown_model_name_has_no_champion(stack: Settings) -> None:
    with pytest.raises(MlflowException):
        registry(stack).get_model_version_by_alias(stack.model_name, "champion")
