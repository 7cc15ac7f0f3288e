"""A classifier on a mixed-type table, a team's own pipeline, and an estimator that cannot be exported,
each through the real training flow (real MLflow server, Prefect's harness); the classifier served by the
real server process: both protocols answer labels and probabilities equal to scikit-learn's for raw rows
with strings, nulls and an unknown category, tritonclient with binary data on and off, typed rows
collected, its known answer smoke-checked, released behind its endpoint and batch-scored."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest

from cli.stack import down
from flows.release import ReleaseParameters, release_flow
from flows.train import TrainParameters, train_flow
from mlflow_server import MlflowServerConfig
from mlops.policies import MonitorPolicy
from mlops.settings import PROJECT_ROOT, Settings
from mlops.spec import TrainingSpec
from serving.bundle import read_bundle
from serving.collector import requests_dir
from serving.model import open_session
from tasks.endpoint_admin import endpoint_url
from tasks.features import typed_features
from tasks.ingest import accepted_frame
from tasks.onnx_convert import ExportError
from tasks.rollout import RolloutConfig, deployment_name
from tasks.sample_data import client_records, json_value
from tasks.serving_bundle import fetch_bundle
from tasks.smoke import SmokeTestError, check_answers
from tasks.tracking import client
from tasks.train import TrainingSet
from tests.conftest import serving_process
from tests.integration.conftest import model_events, model_home, monitor_window, register_bundle, send_with_ids


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


@dataclass(frozen=True)
class Served:
    settings: Settings
    url: str
    rows: pd.DataFrame  # raw feature values as they arrived: strings, gaps, an Int64 with gaps, a flag
    labels: np.ndarray  # scikit-learn's answers
    probabilities: np.ndarray
    collect_dir: Path
    bundle: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, classifier: Settings) -> Iterator[Served]:
    """Version 1 of the classifier (pinned: a test below may register a second) behind a real server process."""
    settings = classifier
    spec = settings.spec()
    frame = accepted_frame(settings.data_for())
    assert frame is not None
    gaps = frame[frame["clinic"].isna()].head(5), frame[frame["lymph_nodes"].isna()].head(5)
    rows = pd.concat([frame.head(30), *gaps])[list(spec.feature_names)].reset_index(drop=True)
    assert rows["clinic"].isna().any() and rows["lymph_nodes"].isna().any()
    model = mlflow.sklearn.load_model(f"models:/{settings.model_name}/1")
    typed = typed_features(rows, spec)
    scratch = tmp_path_factory.mktemp("typed-bundle")
    fetch_bundle(settings.tracking_uri, f"models:/{settings.model_name}/1", scratch / "bundle")
    collect_dir = requests_dir(settings.resolved_home, settings.model_name)  # where the monitor reads
    with serving_process(scratch / "bundle", "--collect-dir", str(collect_dir)) as url:
        labels, probabilities = model.predict(typed), model.predict_proba(typed)
        yield Served(settings, url, rows, labels, probabilities, collect_dir, scratch / "bundle")


def test_invocations_answers_labels_and_opt_in_probabilities_like_scikit_learn(served: Served) -> None:
    records = client_records(served.rows)
    columns = list(served.rows.columns)
    split = {"dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in records]}}
    for body in (split, {"dataframe_records": records}, {"instances": records}):
        answer = httpx.post(f"{served.url}/invocations", json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == served.labels.tolist()
    answer = httpx.post(f"{served.url}/invocations", json={**split, "params": {"predict_method": "predict_proba"}})
    assert answer.status_code == 200, answer.text
    assert np.abs(np.array(answer.json()["predictions"]) - served.probabilities).max() <= 1e-5

    csv = served.rows.to_csv(index=False)  # gaps are empty cells, the flag True/False
    answer = httpx.post(f"{served.url}/invocations", content=csv, headers={"content-type": "text/csv"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == served.labels.tolist()


def test_v2_json_tensors_per_column_answer_label_and_probabilities_with_the_class_names(served: Served) -> None:
    records = client_records(served.rows)
    inputs = []
    for column in served.rows.columns:
        values = [record[column] for record in records]
        text = served.rows[column].dtype == object
        inputs.append({"name": column, "shape": [len(values)], "datatype": "BYTES" if text else "FP64", "data": values})
    answer = httpx.post(f"{served.url}/v2/models/{served.settings.model_name}/infer", json={"inputs": inputs})
    assert answer.status_code == 200, answer.text
    outputs = {output["name"]: output for output in answer.json()["outputs"]}
    assert outputs["label"]["datatype"] == "BYTES" and outputs["label"]["data"] == served.labels.tolist()
    probabilities = outputs["probabilities"]
    assert probabilities["shape"] == [len(records), 2]
    assert probabilities["parameters"]["classes"] == ["benign", "malignant"]
    assert np.abs(np.array(probabilities["data"]).reshape(-1, 2) - served.probabilities).max() <= 1e-5


def test_tritonclient_with_binary_data_on_and_off(served: Served) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(served.url.removeprefix("http://"))
    rows = served.rows
    try:
        for binary in (True, False):
            for width in ("FP64", "FP32"):
                tensors = []
                for column in rows.columns:
                    if rows[column].dtype == object:
                        values = np.array([json_value(v) or "" for v in rows[column]], dtype=object)
                        values[rows[column].isna().to_numpy()] = "__missing__"  # BYTES holds no null
                        tensor = triton.InferInput(column, [len(rows)], "BYTES")
                    else:
                        numbers = rows[column].astype("float64").to_numpy()
                        values = numbers.astype(np.float32) if width == "FP32" else numbers
                        tensor = triton.InferInput(column, [len(rows)], width)
                    tensor.set_data_from_numpy(values, binary_data=binary)
                    tensors.append(tensor)
                wanted = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("label", "probabilities")]
                result = client.infer(served.settings.model_name, tensors, outputs=wanted)
                labels = result.as_numpy("label")
                assert labels is not None
                decoded = [label.decode() if isinstance(label, bytes) else label for label in labels.reshape(-1)]
                assert decoded == served.labels.tolist(), (binary, width)
                probabilities = result.as_numpy("probabilities")
                assert probabilities is not None
                tolerance = 1e-5 if width == "FP64" else 1e-3  # FP32 rounds the inputs themselves
                assert np.abs(probabilities - served.probabilities).max() <= tolerance, (binary, width)
    finally:
        client.close()


def test_an_unknown_category_is_scored_and_counted_and_a_missing_required_value_is_refused(served: Served) -> None:
    record = client_records(served.rows.head(1))[0]
    answer = httpx.post(f"{served.url}/invocations", json={"dataframe_records": [{**record, "clinic": "harbour"}]})
    assert answer.status_code == 200, answer.text
    metrics = httpx.get(f"{served.url}/metrics").text
    counted = [line for line in metrics.splitlines() if line.startswith("mlops_serving_unknown_categories_total")]
    assert len(counted) == 1 and 'column="clinic"' in counted[0] and counted[0].endswith(" 1.0"), counted

    refused = httpx.post(f"{served.url}/invocations", json={"dataframe_records": [{**record, "mean radius": None}]})
    assert refused.status_code == 400
    assert "column 'mean radius': missing, but mean radius may not be missing" in refused.json()["message"]
    wrong = httpx.post(f"{served.url}/invocations", json={"dataframe_records": [{**record, "mean texture": "soft"}]})
    assert wrong.status_code == 400 and "column 'mean texture': expected a number" in wrong.json()["message"]
    regression_only = {"dataframe_records": [record], "params": {"predict_method": "decision_function"}}
    assert httpx.post(f"{served.url}/invocations", json=regression_only).status_code == 400


def test_collected_rows_keep_each_columns_type_the_label_and_the_probabilities(served: Served) -> None:
    httpx.post(f"{served.url}/invocations", json={"dataframe_records": client_records(served.rows.head(3))})
    lines: list[dict[str, Any]] = []
    for _ in range(50):  # the collector writes every 0.1 s
        files = sorted(served.collect_dir.glob("requests-*.jsonl*"))
        lines = [json.loads(line) for path in files for line in path.read_text().splitlines()[1:] if line]
        if lines:
            break
        time.sleep(0.1)
    assert lines, f"nothing collected in {served.collect_dir}"
    call = lines[0]
    columns = list(served.rows.columns)
    first = dict(zip(columns, call["inputs"][0], strict=True))
    assert isinstance(first["clinic"], str) and isinstance(first["mean radius"], float)
    assert call["predictions"][0] in ("benign", "malignant")
    assert len(call["probabilities"][0]) == 2 and abs(sum(call["probabilities"][0]) - 1) < 1e-6


def send(served: Served, rows: pd.DataFrame) -> list[str]:
    """Score ``rows`` one per request with our own request ids (the ids delayed labels refer to)."""
    return send_with_ids(f"{served.url}/invocations", ({"dataframe_records": [r]} for r in client_records(rows)))


def test_the_monitor_judges_the_classifier_like_evidently_from_labels_and_before_them(served: Served) -> None:
    """Drift by column kind (p-value tests: the reference has 569 rows) naming the columns Evidently names,
    typed collection read back, delayed labels scored, and the label-free estimate within its band of the
    accuracy the labels then show, on a window shifted towards the hard cases."""
    from flows.monitor import monitor_flow
    from tasks.collected import load_requests

    settings = served.settings
    spec = settings.spec()
    frame = accepted_frame(settings.data_for())
    assert frame is not None
    started = time.time()
    send(served, frame.sample(n=150, random_state=1)[spec.feature_names])
    collected = load_requests(served.collect_dir, started, None, None, ["probability.benign", "probability.malignant"])
    assert collected["clinic"].dtype == object and collected["mean radius"].dtype == np.float64
    assert set(collected["prediction"]) <= {"benign", "malignant"}
    assert np.allclose(collected[["probability.benign", "probability.malignant"]].sum(axis=1), 1)
    like_training = monitor_flow(monitor_window(started))
    assert like_training.status == "judged", like_training.message
    drifted = {*like_training.drift["drifted_columns"], *like_training.drift["drifted_outputs"]}
    assert drifted == set(like_training.evidently_drifted) and not like_training.drift["drifted"]
    assert (
        like_training.drift["methods"]["clinic"] == "chisquare"
        and like_training.drift["methods"]["mean radius"] == "ks"
    )
    assert like_training.estimated["estimated_accuracy"] > 0.85

    # the hard cases: mid-sized nuclei, where benign and malignant overlap, from one clinic
    hard = frame[frame["mean radius"].between(12, 17)].assign(clinic="north")
    labels_of = dict(zip(hard.index, hard["diagnosis"], strict=True))
    started = time.time()
    ids = send(served, hard[spec.feature_names])
    labels_dir = settings.resolved_home / "labels" / settings.model_name
    labels_dir.mkdir(parents=True, exist_ok=True)
    # a strict policy for this window (holdout accuracy 0.97): estimate or labels 0.01 lower are a drop
    strict = MonitorPolicy(estimated_drop=0.01, max_drop={"accuracy": 0.01})
    params = monitor_window(started).model_copy(update={"policy": strict})
    since = datetime.now(UTC)
    expected = {"performance.estimated_drop", "performance.degraded"}
    shifted = monitor_flow(params)  # before any label arrives
    drifted = {*shifted.drift["drifted_columns"], *shifted.drift["drifted_outputs"]}
    assert drifted == set(shifted.evidently_drifted) and {"mean radius", "clinic"} <= drifted
    assert shifted.drift["drifted"] and shifted.performance["labelled_rows"] == 0

    pd.DataFrame({"request_id": ids, "diagnosis": [labels_of[i] for i in hard.index]}).to_csv(
        labels_dir / "labels.csv", index=False
    )
    labelled = monitor_flow(params)  # the same window, now with its labels
    model = mlflow.sklearn.load_model(f"models:/{settings.model_name}/1")
    realised = float(np.mean(model.predict(typed_features(hard, spec)) == hard["diagnosis"].to_numpy()))
    assert labelled.performance["accuracy"] == pytest.approx(realised)
    assert {"f1_macro", "roc_auc", "log_loss"} <= set(labelled.performance)
    estimated = shifted.estimated
    assert estimated["estimated_accuracy_lower"] <= realised <= estimated["estimated_accuracy_upper"], estimated
    assert estimated["estimated_accuracy"] < like_training.estimated["estimated_accuracy"]
    assert estimated["dropped"] and labelled.performance["degraded"]  # by the window's strict policy
    names = {event.event for event in model_events(settings.model_name, since, "performance.", expected)}
    assert names == expected, names


def mlops(*args: str) -> subprocess.CompletedProcess[str]:
    """The ``mlops`` command as a user runs it (the model home's environment is inherited)."""
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT
    )


def test_mlops_trace_leads_from_a_served_request_to_its_inputs_outputs_and_lineage(served: Served) -> None:
    request_id = f"trace-{uuid.uuid4().hex}"
    body = {"dataframe_records": client_records(served.rows.iloc[[0, 31]])}  # the second row has gaps
    assert httpx.post(f"{served.url}/invocations", json=body, headers={"x-request-id": request_id}).status_code == 200
    time.sleep(0.5)  # the collector writes every 0.1 s
    done = mlops("trace", request_id)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert (found["source"], found["model"], found["version"]) == ("served", served.settings.model_name, "1")
    assert found["deployment"] == deployment_name(served.settings.model_name, "1")
    assert [row["prediction"] for row in found["rows"]] == served.labels[[0, 31]].tolist()
    chances = [row["probabilities"]["malignant"] for row in found["rows"]]
    assert np.allclose(chances, served.probabilities[[0, 31], 1], atol=1e-5)
    assert found["rows"][0]["mean radius"] == served.rows["mean radius"].iloc[0]
    version = client(served.settings.tracking_uri).get_model_version(served.settings.model_name, "1")
    lineage = found["lineage"]
    assert lineage["run_id"] == version.run_id and lineage["onnx_sha256"] == version.tags["onnx_sha256"]
    for key in ("git_commit", "dataset_digest", "validation_summary"):
        assert lineage[key] == version.tags[key], key
    assert "roc_auc" in lineage["holdout_metrics"]

    missing = mlops("trace", "no-such-request")
    assert missing.returncode == 1 and "not found: searched" in missing.stderr
    assert str(served.settings.resolved_home / "requests") in missing.stderr


def test_the_bundles_known_answer_passes_the_smoke_check_and_a_wrong_one_fails(served: Served) -> None:
    _, metadata = read_bundle(served.bundle)
    assert metadata.example is not None and metadata.example.probabilities
    assert check_answers(served.url, metadata, timeout=10) <= metadata.example.tolerance
    flipped = tuple("benign" if label == "malignant" else "malignant" for label in metadata.example.predictions)
    with pytest.raises(SmokeTestError, match="answered the known request with labels"):
        check_answers(served.url, replace(metadata, example=replace(metadata.example, predictions=flipped)), 10)


def test_the_classifier_is_released_behind_its_endpoint(served: Served) -> None:
    settings = served.settings
    quick = RolloutConfig(steps=[50, 100], bake_seconds=1.0, min_requests=0)
    try:
        outcome = release_flow(ReleaseParameters(version="1", image="never", rollout=quick))
        assert outcome.rollout == "nothing_to_do", outcome.message
        record = client_records(served.rows.head(3))
        answer = httpx.post(f"{endpoint_url(settings)}/invocations", json={"dataframe_records": record}, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == served.labels[:3].tolist()
        assert answer.headers["x-mlops-deployment"] == deployment_name(settings.model_name, "1")
    finally:
        down(settings)


def flipped_labels(bundle: Path) -> tuple[bytes, Any]:
    """The bundle's graph answering the other class (its class list reversed, the probabilities untouched: an
    export that mixed up the class order), with a known answer that agrees with it, so only traffic can tell."""
    import onnx

    model_file, metadata = read_bundle(bundle)
    graph = onnx.load(model_file)
    classes = [label.encode() for label in metadata.classes]
    reversed_lists = 0
    for tensor in graph.graph.initializer:  # the label is looked up in a string tensor of the classes ...
        if list(tensor.string_data) == classes:
            tensor.string_data[:] = classes[::-1]
            reversed_lists += 1
    for node in graph.graph.node:  # ... or named by the classifier node's attribute
        for attribute in node.attribute:
            if attribute.name == "classlabels_strings" and list(attribute.strings) == classes:
                attribute.strings[:] = classes[::-1]
                reversed_lists += 1
    assert reversed_lists, "no class list found in the graph"
    other = {"benign": "malignant", "malignant": "benign"}
    example = replace(metadata.example, predictions=tuple(other[label] for label in metadata.example.predictions))
    return graph.SerializeToString(), replace(metadata, example=example)


def test_a_label_flipping_canary_is_rolled_back_and_a_good_one_promoted_under_load(served: Served) -> None:
    """A canary that swaps the two classes: caught by label agreement in the shadow phase a classifier's rollout
    starts with by default (never answering a user), and — without a shadow phase, on traffic where one class
    dominates — by the chi-square test of predicted classes at its first step. The same model registered again
    is promoted through shadow and steps under load with no failed request."""
    from cli.traffic import BackgroundTraffic

    settings = served.settings
    tracker = client(settings.tracking_uri)
    frame = accepted_frame(settings.data_for())
    assert frame is not None
    columns = list(served.rows.columns)
    everyone = client_records(frame[columns])
    mostly_benign = client_records(
        pd.concat([frame[frame["diagnosis"] == "benign"], frame[frame["diagnosis"] != "benign"].head(50)])[columns]
    )
    quick = RolloutConfig(steps=[10, 50, 100], bake_seconds=2.0, min_requests=20, p99_slack_ms=50.0)
    champion = deployment_name(settings.model_name, "1")

    def traffic(records: list[dict[str, Any]]) -> BackgroundTraffic:
        return BackgroundTraffic(
            f"{endpoint_url(settings)}/invocations",
            lambda rng: {"dataframe_records": [records[rng.randrange(len(records))]]},
            max_seconds=120,
            concurrency=4,
        )

    def release(config: RolloutConfig) -> Any:
        return release_flow(ReleaseParameters(version="challenger", image="never", rollout=config))

    try:
        assert release_flow(ReleaseParameters(version="1", image="never", rollout=quick)).rollout == "nothing_to_do"
        bad = register_bundle(settings, *flipped_labels(served.bundle))
        with traffic(everyone) as load:
            outcome = release(quick)  # shadow phase by default for a classifier
        assert outcome.rollout == "rolled_back" and [s["canary weight %"] for s in outcome.steps] == [0], (
            outcome.message,
            outcome.steps,
        )
        assert "agree with the answers given" in outcome.message, outcome.message
        assert set(load.result.deployments) == {champion} and load.result.server_errors == 0  # it answered no one
        assert tracker.get_model_version(settings.model_name, bad).tags["rollout"] == "rolled_back"

        register_bundle(settings, *flipped_labels(served.bundle))
        with traffic(mostly_benign) as load:
            outcome = release(quick.model_copy(update={"shadow_seconds": 0.0}))
        assert outcome.rollout == "rolled_back" and [s["canary weight %"] for s in outcome.steps] == [10], (
            outcome.message
        )
        assert "Cramér's V" in outcome.message, outcome.message
        assert load.result.server_errors == 0 and load.result.connection_errors == 0, load.result.errors[:3]
        assert tracker.get_model_version_by_alias(settings.model_name, "champion").version == "1"

        first = tracker.get_model_version(settings.model_name, "1")  # the same model registered again: a good one
        logged_model = first.source.removeprefix("models:/")  # MLflow 3: the logged model the source names
        good = tracker.create_model_version(
            settings.model_name, first.source, run_id=first.run_id, tags=first.tags, model_id=logged_model
        )
        tracker.set_registered_model_alias(settings.model_name, "challenger", good.version)
        with traffic(everyone) as load:
            outcome = release(quick)
        assert outcome.rollout == "promoted", outcome.message
        assert [(step["canary weight %"], step["verdict"]) for step in outcome.steps] == [
            (0, "pass"), (10, "pass"), (50, "pass"), (100, "pass")
        ]  # fmt: skip
        assert load.result.requests > 300
        assert load.result.server_errors == 0 and load.result.connection_errors == 0, load.result.errors[:5]
        assert tracker.get_model_version_by_alias(settings.model_name, "champion").version == good.version
    finally:
        down(settings)
        tracker.set_registered_model_alias(settings.model_name, "champion", "1")  # the tests below train against v1


def test_batch_scoring_of_mixed_type_files_answers_labels_probabilities_and_quarantines_bad_rows_alone_and_on_dask(
    served: Served, dask_cluster: str, tmp_path: Path
) -> None:
    from flows.batch_score import BatchScoreParameters, batch_score_flow
    from tasks.batch import REJECTED, read_scores

    source = served.rows.assign(patient_id=[f"P{n}" for n in range(len(served.rows))])
    broken = source.head(2).copy()
    broken["mean texture"] = broken["mean texture"].astype(object)
    broken.loc[broken.index[0], "mean texture"] = "soft"  # not a number
    broken.loc[broken.index[1], "mean radius"] = None  # may not be missing
    (tmp_path / "input").mkdir()
    source.to_csv(tmp_path / "input" / "patients.csv", index=False)
    broken.to_csv(tmp_path / "input" / "referrals.csv", index=False)

    def scored(output: str, **dask: str) -> Any:
        return batch_score_flow(
            BatchScoreParameters(input=str(tmp_path / "input"), output=output, version="1", chunk_rows=25, **dask)
        )

    outcome = scored(str(tmp_path / "out"))
    assert (outcome.scored, outcome.rejected) == (len(source), 2)
    spread = scored(str(tmp_path / "dask"), dask_address=dask_cluster)  # one file per task on the cluster's workers
    assert (spread.scored, spread.rejected, spread.parts_written) == (outcome.scored, 2, outcome.parts_written)
    assert sum(spread.workers.values()) == 2, spread.workers
    alone, shared = (sorted((tmp_path / root).glob("*/*.parquet")) for root in ("out", "dask"))  # parts, quarantine
    assert [p.relative_to(tmp_path / "dask") for p in shared] == [p.relative_to(tmp_path / "out") for p in alone]
    for ours, theirs in zip(alone, shared, strict=True):
        pd.testing.assert_frame_equal(pd.read_parquet(ours), pd.read_parquet(theirs))
    scores = read_scores(tmp_path / "out")
    assert scores["prediction"].tolist() == served.labels.tolist()
    probabilities = scores[["probability_benign", "probability_malignant"]].to_numpy()
    assert np.abs(probabilities - served.probabilities).max() <= 1e-5
    assert scores["patient_id"].tolist() == source["patient_id"].tolist()  # the input's columns are kept
    rejected = pd.concat(pd.read_parquet(p) for p in (tmp_path / "out" / REJECTED).glob("*.parquet"))
    assert sorted(rejected["reason"]) == ["mean radius is missing and may not be", "mean texture is not a number"]

    done = mlops("trace", "patients:3", "--batch-dir", str(tmp_path / "out"))  # a batch row, back to its origin
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert (found["source"], found["version"], found["rows"][0]["patient_id"]) == ("batch", "1", "P3")
    assert found["rows"][0]["prediction"] == served.labels[3]
    assert found["lineage"]["onnx_sha256"] and found["lineage"]["dataset_digest"]


def test_the_classifiers_image_passes_the_typed_smoke_check_in_a_container(served: Served, docker_engine: Any) -> None:
    """The release flow builds the classifier's serving image and asks the container its typed known answer
    by both protocols (labels exact, probabilities within the tolerance) before recording it."""
    settings = served.settings
    try:
        outcome = release_flow(ReleaseParameters(version="1", image_only=True))
        tags = client(settings.tracking_uri).get_model_version(settings.model_name, "1").tags
        assert tags["image_smoke"] == "passed", tags.get("image_smoke_summary")
        assert outcome.image == f"mlops/{settings.model_name}:1"
    finally:
        for image in docker_engine.images.list(name=f"mlops/{settings.model_name}"):
            docker_engine.images.remove(image.id, force=True)


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
