"""A classifier on a mixed-type table, a team's own pipeline, and an estimator that cannot be exported,
each through the real training flow (real MLflow server, Prefect's harness)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest

from flows.train import TrainParameters, train_flow
from mlflow_server import MlflowServerConfig
from mlops.settings import Settings
from mlops.spec import TrainingSpec
from serving.model import open_session
from tasks.features import typed_features
from tasks.ingest import accepted_frame
from tasks.onnx_convert import ExportError
from tasks.serving_bundle import fetch_bundle
from tasks.tracking import client
from tasks.train import TrainingSet
from tests.integration.conftest import model_home


@pytest.fixture(scope="module")
def classifier(
    tmp_path_factory: pytest.TempPathFactory, mlflow_config: MlflowServerConfig, prefect_harness: None
) -> Iterator[Settings]:
    """The example classifier (a copy of models/tumours.yaml) trained once on its four batches."""
    with model_home(tmp_path_factory, mlflow_config.url, "tumours", base="tumours") as settings:
        yield settings


def test_the_mixed_type_classifier_registers_with_its_metrics_plots_and_lineage(classifier: Settings) -> None:
    tracker = client(classifier.tracking_uri)
    version = tracker.get_model_version_by_alias(classifier.model_name, "champion")
    run = tracker.get_run(version.run_id)
    assert {"roc_auc", "log_loss", "accuracy", "f1_macro"} <= set(run.data.metrics)
    assert run.data.metrics["roc_auc"] > 0.95 and run.data.metrics["accuracy"] > 0.85
    assert run.data.params["task"] == "binary" and run.data.params["classes"] == '["benign", "malignant"]'
    artifacts = {item.path for item in tracker.list_artifacts(run.info.run_id)}
    assert {"confusion_matrix.png", "calibration.png", "feature_importance.png", "spec.json"} <= artifacts
    for tag in ("dataset_digest", "git_commit", "prefect_flow_run_id", "onnx_sha256"):
        assert version.tags.get(tag), tag
    assert version.tags["onnx_parity"] == "passed"


def test_its_onnx_bundle_agrees_with_scikit_learn_on_the_typed_holdout(classifier: Settings) -> None:
    spec = classifier.spec()
    frame = accepted_frame(classifier.data_for())
    assert frame is not None and frame["clinic"].isna().any() and frame["lymph_nodes"].isna().any()
    _, _, x_holdout, _ = TrainingSet(frame, spec).split()
    model = mlflow.sklearn.load_model(f"models:/{classifier.model_name}@champion")
    with tempfile.TemporaryDirectory() as scratch:
        model_file, metadata = fetch_bundle(
            classifier.tracking_uri, f"models:/{classifier.model_name}@champion", Path(scratch)
        )
        session = open_session(str(model_file))
    assert metadata.task == "binary" and list(metadata.classes) == ["benign", "malignant"]
    assert list(metadata.outputs) == ["label", "probabilities"]
    inputs = {item["column"]: item for item in metadata.inputs}
    assert inputs["mean radius"]["input"] == "mean_radius" and inputs["clinic"]["type"] == "string"
    feeds = {
        inputs[column]["input"]: x_holdout[column]
        .to_numpy(np.float64 if inputs[column]["type"] == "double" else object)
        .reshape(-1, 1)
        for column in spec.feature_names
    }
    labels, probabilities = session.run(None, feeds)
    assert (labels.ravel() == model.predict(x_holdout)).all()
    assert np.abs(probabilities - model.predict_proba(x_holdout)).max() <= 1e-5
    assert set(np.unique(labels)) <= {"benign", "malignant"}


def test_a_new_category_at_scoring_time_is_ignored_by_both(classifier: Settings) -> None:
    frame = accepted_frame(classifier.data_for())
    assert frame is not None
    typed = typed_features(frame.head(5).assign(clinic="harbour"), classifier.spec())
    model = mlflow.sklearn.load_model(f"models:/{classifier.model_name}@champion")
    assert len(model.predict(typed)) == 5


def test_a_factory_pipeline_trains_exports_and_logs_its_source(classifier: Settings) -> None:
    own = TrainingSpec(pipeline="tests.integration.factories:extra_trees", preprocess=False)
    outcome = train_flow(TrainParameters(training=own))
    assert outcome.status in ("registered", "kept"), outcome.message
    run = client(classifier.tracking_uri).get_run(outcome.run_id or "")
    assert run.data.tags["pipeline_factory"] == "tests.integration.factories:extra_trees"
    assert len(run.data.tags["pipeline_factory_sha256"]) == 64
    assert run.data.tags["onnx_parity"] == "passed"
    assert [a.path for a in client(classifier.tracking_uri).list_artifacts(run.info.run_id, "factory")] == [
        "factory/factories.py"
    ]


def test_an_unexportable_estimator_is_refused_before_training_with_a_short_error(
    tmp_path_factory: pytest.TempPathFactory, mlflow_config: MlflowServerConfig, prefect_harness: None
) -> None:
    with model_home(tmp_path_factory, mlflow_config.url, "svr", trainings=()) as settings:
        from tasks.sample_data import land_batches

        land_batches(settings.landing_for(), [0, 1, 2, 3])
        svr = TrainingSpec(pipeline="tests.integration.factories:support_vectors")
        with pytest.raises(ExportError) as caught:
            train_flow(TrainParameters(training=svr))
        message = str(caught.value)
        assert ("refused before training" in message and "SVR" in message) or "SVMRegressor" in message
        assert len(message.splitlines()) <= 20 and len(message) < 2000
        tracker = client(settings.tracking_uri)
        experiment = tracker.get_experiment_by_name(settings.spec().experiment)
        assert experiment is not None
        [run] = tracker.search_runs([experiment.experiment_id], filter_string="tags.onnx_export = 'refused'")
        assert run.info.status == "FAILED"
        detail = tracker.download_artifacts(run.info.run_id, "export/error.txt", str(tmp_path_factory.mktemp("err")))
        assert "Traceback" in Path(detail).read_text()
        assert tracker.search_registered_models(f"name = '{settings.model_name}'") == []
