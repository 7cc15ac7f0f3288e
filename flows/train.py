"""The training half of the loop: ingest, validate, train, export to ONNX, compare with the champion, register.

Run with the defaults: ``python -m flows.train`` (honours MLFLOW_TRACKING_URI and
PREFECT_API_URL). Re-running on the same data, code and parameters registers nothing new.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any

from mlflow.exceptions import MlflowException
from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from flows.run_once import print_outcome
from mlops.policies import ValidationPolicy
from mlops.settings import Settings, get_settings
from mlops.spec import ModelSpec, PromotionSpec, TrainingSpec, load_spec
from tasks.dataset import ledger_entries
from tasks.evaluate import evaluate_against_champion, publish_comparison
from tasks.export import ExportConfig, export_onnx
from tasks.features import load_factory
from tasks.ingest import (
    accept_batch,
    assemble_training_set,
    list_new_batches,
    quarantine_batch,
    read_batch,
    reference_data,
)
from tasks.lineage import git_commit, training_key
from tasks.registry import keep_champion, register_candidate
from tasks.tracking import (
    TrackingServerUnavailable,
    check_tracking_server,
    describe_failure,
    run_url,
    version_url,
)
from tasks.train import (
    ABANDONED,
    Candidate,
    Lineage,
    TrainingSet,
    end_abandoned_runs,
    find_previous_training,
    log_diagnostics,
    train_candidate,
)
from tasks.training_lock import training_lock
from tasks.validate import unreadable_report, validate_batch


class DataRejectedError(RuntimeError):
    """New data failed validation; it was quarantined and nothing was trained."""


class TrainParameters(BaseModel):
    """Parameters of a training run (rendered as a form in the Prefect UI); sections given here replace the spec's."""

    model: str | None = Field(
        None, description="Model spec: a name in the models folder, or a spec file (default: MLOPS_MODEL_NAME)."
    )
    training: TrainingSpec | None = Field(None, description="Replaces the spec's training section for this run.")
    promotion: PromotionSpec | None = Field(None, description="Replaces the spec's promotion criteria.")
    validation: ValidationPolicy | None = Field(None, description="Replaces the spec's validation policy.")
    export: ExportConfig = Field(default_factory=ExportConfig)


def resolve_spec(params: TrainParameters, settings: Settings) -> ModelSpec:
    """The run's model spec: the file, with the sections the parameters give.

    Raises:
        SpecError: No such spec, or it is invalid (the message names the file and field).
    """
    spec = load_spec(params.model or settings.model_name, settings.specs_dir)
    return spec.with_sections(training=params.training, promotion=params.promotion, validation=params.validation)


@dataclass(frozen=True)
class TrainOutcome:
    """What a training run did.

    Attributes:
        status: ``registered`` (new version), ``kept`` (champion stays) or ``unchanged`` (same training ran before).
        message: One line for people.
        model_name: Registered model name.
        version: The registered version, if any.
        alias: ``champion`` or ``challenger`` for a registered version.
        run_id: The MLflow run of the candidate.
        run_url: Where to see the run in the MLflow UI.
        version_url: Where to see the version in the MLflow UI.
        accepted: Batches accepted in this run.
        metrics: Candidate holdout metrics.
    """

    status: str
    message: str
    model_name: str
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    run_url: str | None = None
    version_url: str | None = None
    accepted: tuple[str, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)


@flow(name="train", log_prints=True)
def train_flow(params: TrainParameters | None = None) -> TrainOutcome:
    """Ingest new batches, validate them, and train a candidate that only registers if it beats the champion."""
    params = params or TrainParameters()
    settings = get_settings()
    logger = get_run_logger()
    spec = resolve_spec(params, settings)
    model_name = spec.name
    landing, data_uri = spec.landing_uri(settings.landing), spec.data_uri(settings.data)
    tracking = settings.tracking_uri
    check_tracking_server(tracking)
    factory = load_factory(spec.training.pipeline) if spec.training.pipeline else None

    holder = f"flow run {flow_run.name or flow_run.id or 'outside Prefect'}"
    with training_lock(data_uri, model_name, holder) as exclusive:  # a second run fails here, before any batch
        if exclusive and (abandoned := end_abandoned_runs(tracking, spec.experiment)):
            logger.warning("marked FAILED the training run(s) %s: %s", ", ".join(abandoned), ABANDONED)
        try:
            outcome, trained = _train(params, spec, landing, data_uri, tracking, factory, logger)
        except MlflowException as error:  # MLflow's own text is a retry trace; say what happened
            failure = describe_failure(tracking, error)
            if failure.startswith("tracking server unreachable"):
                raise TrackingServerUnavailable(f"training of {model_name} stopped: {failure}") from error
            raise
    if trained is not None:  # after the decision and the lock: neither a release nor the next training waits for it
        log_diagnostics(*trained, tracking)
    return outcome


def _train(
    params: TrainParameters,
    spec: ModelSpec,
    landing: str,
    data_uri: str,
    tracking: str,
    factory: Any,
    logger: Any,
) -> tuple[TrainOutcome, tuple[Candidate, TrainingSet] | None]:
    """The run, under the model's training lock; with the candidate and its data when one was trained (its
    diagnostics come after the lock)."""
    model_name = spec.name
    accepted: list[str] = []
    rejected: list[str] = []
    for batch in list_new_batches(landing):
        read = read_batch(batch)
        if read.frame is None:
            report = unreadable_report(batch.name, read.error or "unreadable")
        else:
            report = validate_batch(read.frame, batch.name, spec, reference_data(data_uri))
        if report.success and read.frame is not None:
            duplicate = accept_batch(batch, read.frame, data_uri, model_name, report.to_dict())
            if duplicate is None:
                accepted.append(batch.name)
            else:
                logger.warning("%s", duplicate)
        else:
            where = quarantine_batch(batch, data_uri, model_name, report.to_dict())
            rejected.append(f"{batch.name} quarantined at {where}: {report.reason}")
    if rejected:
        raise DataRejectedError("new data failed validation, nothing was trained: " + " | ".join(rejected))

    frame, snapshot = assemble_training_set(data_uri)
    commit = git_commit()
    choices = {**spec.training.model_dump(mode="json"), "factory_sha256": factory.sha256 if factory else None}
    key = training_key(snapshot.digest, commit, {"spec": spec.model_dump(mode="json"), "training": choices})
    previous = find_previous_training(tracking, spec.experiment, key)
    if previous is not None:
        outcome = previous["outcome"]
        version = outcome.split(":", 1)[1] if outcome.startswith("registered:") else None
        return _report(
            TrainOutcome(
                status="unchanged",
                message=f"same data, code and parameters were trained before (run {previous['run_id']}): "
                f"{previous.get('outcome_message', outcome)}; nothing new registered",
                model_name=model_name,
                version=version,
                run_id=previous["run_id"],
                run_url=run_url(tracking, previous["experiment_id"], previous["run_id"]),
                version_url=version_url(tracking, model_name, version) if version else None,
                accepted=tuple(accepted),
            ),
            logger,
        ), None

    reports = {entry["name"]: entry.get("validation", {}) for entry in ledger_entries(data_uri)}
    expectations = sum(int(report.get("expectations", 0)) for report in reports.values())
    lineage = Lineage(
        dataset_digest=snapshot.digest,
        dataset_uri=snapshot.uri,
        git_commit=commit,
        flow_run_id=str(flow_run.id or "none"),
        validation=f"passed: {len(reports)} batch(es), {expectations} expectations",
        training_key=key,
    )
    data = TrainingSet(frame, spec)
    candidate = train_candidate(data, snapshot, lineage, tracking, reports, factory)
    export = export_onnx(candidate, data, tracking, params.export)
    comparison = evaluate_against_champion(candidate, data, tracking, model_name, spec)
    publish_comparison(comparison, model_name)
    common: dict[str, Any] = {
        "model_name": model_name,
        "run_id": candidate.run_id,
        "run_url": run_url(tracking, candidate.experiment_id, candidate.run_id),
        "accepted": tuple(accepted),
        "metrics": candidate.metrics,
    }
    if not comparison.better:
        message = keep_champion(candidate, comparison, tracking, model_name)
        return _report(TrainOutcome(status="kept", message=message, **common), logger), (candidate, data)
    registration = register_candidate(candidate, comparison, lineage, export, tracking, model_name)
    return _report(
        TrainOutcome(
            status="registered",
            message=f"{model_name} version {registration.version} registered as {registration.alias}: "
            f"{comparison.summary}; ONNX {export.parity.summary}",
            version=registration.version,
            alias=registration.alias,
            version_url=version_url(tracking, model_name, registration.version),
            **common,
        ),
        logger,
    ), (candidate, data)


def _report(outcome: TrainOutcome, logger: Any) -> TrainOutcome:
    logger.info("%s", outcome.message)
    return outcome


def main(argv: list[str] | None = None) -> int:
    """Run the flow once for a model (optionally one family, another seed) and print the outcome."""
    parser = argparse.ArgumentParser(prog="python -m flows.train", description=__doc__)
    parser.add_argument("--model", default=None, help="model spec name or file (default: MLOPS_MODEL_NAME)")
    parser.add_argument("--family", default=None, help="train this family only (default: the spec's families)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    return print_outcome(lambda: train_flow(parameters(args.model, args.family, args.seed)), "training")


def parameters(model: str | None, family: str | None = None, seed: int | None = None) -> TrainParameters:
    """Run parameters for a model, with the spec's training section changed only where asked."""
    if family is None and seed is None:
        return TrainParameters(model=model)
    spec = load_spec(model or get_settings().model_name, get_settings().specs_dir)
    changes: dict[str, Any] = {"families": [family], "grid": None, "pipeline": None} if family else {}
    if seed is not None:
        changes["seed"] = seed
    training = TrainingSpec.model_validate({**spec.training.model_dump(), **changes})
    return TrainParameters(model=model, training=training)


if __name__ == "__main__":
    sys.exit(main())
