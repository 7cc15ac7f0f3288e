"""Register a model trained elsewhere: the gates a trained version passes, then the same release.

``python -m flows.register --model diabetes model.onnx`` (or ``mlops register``, which also loads pickles
on your own machine). Sources: see ``tasks.outside``. What a trained version gets, a registered one gets
wherever the data allows: the spec's contract (columns, kinds, task, classes); the ONNX export and its
parity gate against the source (a Python model) or a smoke check and an expected-answers file (an ONNX
file); holdout metrics on the model's accepted data compared with the champion by the spec's promotion
rule (registered as challenger only if better, unless forced with a reason); the monitoring reference; and
lineage tags saying where it came from. A refusal registers nothing.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from dataclasses import dataclass, field

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from flows.run_once import print_outcome
from mlops.settings import get_settings
from mlops.spec import load_spec
from tasks.export import ONNX_ARTIFACT_DIR, ExportConfig, OnnxExport
from tasks.lineage import git_commit
from tasks.outside import load_source, pickles_trusted
from tasks.registration import check_rows, check_source, compare_with_champion, log_registration
from tasks.registry import register_candidate
from tasks.tracking import check_tracking_server, run_url, version_url
from tasks.train import Candidate, Lineage


class RegisterParameters(BaseModel):
    """A model trained elsewhere, and what to check it with (rendered as a form in the Prefect UI)."""

    model: str | None = Field(None, description="The model spec it is registered under (default: MLOPS_MODEL_NAME).")
    source: str = Field(
        description="An .onnx or .skops file, or an MLflow model (runs:/..., models:/..., a folder or s3:// path "
        "holding an MLmodel file). Pickles (.pkl, .joblib) only with `mlops register` on your own machine."
    )
    source_tracking_uri: str | None = Field(
        None, description="The MLflow server a runs:/ or models:/ source lives on (default: this one)."
    )
    reference: str | None = Field(
        None,
        description="CSV/Parquet rows like the model's inputs: what it is checked on and monitored against when "
        "the model has no accepted data (with the target column, its metrics too).",
    )
    expected: str | None = Field(
        None,
        description="CSV/Parquet of rows with the spec's features and the answers the model must give: "
        "`prediction` (and `probability.<class>` for classifiers).",
    )
    force: bool = Field(False, description="Register as challenger even if it is not better than the champion.")
    reason: str = Field("", description="Why it is registered (required with force); recorded on the version.")
    export: ExportConfig = Field(default_factory=ExportConfig)


@dataclass(frozen=True)
class RegisterOutcome:
    """What a registration did: ``registered`` (version and alias) or ``kept`` (not better: nothing registered)."""

    status: str
    message: str
    model_name: str
    source: str
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    run_url: str | None = None
    version_url: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    checks: str = ""


@flow(name="register", log_prints=True)
def register_flow(params: RegisterParameters | None = None) -> RegisterOutcome:
    """Register a model trained elsewhere under a spec, through the gates a trained version passes."""
    if params is None:
        raise ValueError("give the source to register: params.source (an .onnx file, an MLflow model URI, ...)")
    if params.force and not params.reason.strip():
        raise ValueError("force needs a reason (--reason): it is recorded on the version with who forced it")
    settings = get_settings()
    logger = get_run_logger()
    spec = load_spec(params.model or settings.model_name, settings.specs_dir)
    tracking = settings.tracking_uri
    check_tracking_server(tracking)
    source = load_source(params.source, params.source_tracking_uri, trust_pickles=pickles_trusted())
    rows = check_rows(spec, spec.data_uri(settings.data), params.reference)
    checked = check_source(source, spec, rows, params.export, params.expected)
    metrics, comparison = compare_with_champion(checked, spec, rows, tracking, spec.name)
    identity = getpass.getuser()
    if not comparison.better and not params.force:
        why = (
            comparison.summary
            if comparison.rows
            else f"there is no accepted data to compare it with champion version {comparison.champion_version} on"
        )
        message = f"{spec.name}: {source.uri} not registered: {why}; register it anyway with --force --reason"
        logger.info("%s", message)
        return RegisterOutcome("kept", message, spec.name, source.uri, metrics=metrics, checks=checked.summary)

    run_id, experiment_id, logged = log_registration(
        source, spec, rows, checked, metrics, params.reference, tracking, identity
    )
    lineage = Lineage(
        dataset_digest=rows.digest,
        dataset_uri=rows.origin,
        git_commit=git_commit(),
        flow_run_id=str(flow_run.id or "none"),
        validation=f"registered from outside: spec contract checked; {checked.summary}",
        training_key=f"outside:{source.sha256}",
    )
    export = OnnxExport(run_id, f"runs:/{run_id}/{ONNX_ARTIFACT_DIR}", logged["sha256"], checked.parity, {})
    candidate = Candidate(run_id, experiment_id, logged["model_uri"], logged["model_id"], source.family, {}, metrics)
    extra = {
        "trained_outside": "true",
        "source_uri": source.uri,
        "source_sha256": source.sha256,
        "source_flavour": source.flavour,
        "registered_by": identity,
        "registration_reason": params.reason or "none given",
    }
    forced = f"{identity}: {params.reason}" if params.force and not comparison.better else None
    registration = register_candidate(candidate, comparison, lineage, export, tracking, spec.name, extra, forced)
    message = (
        f"{spec.name} version {registration.version} registered as {registration.alias} from {source.uri}: "
        f"{comparison.summary if comparison.rows else 'no champion to compare with' if comparison.better else 'forced'}"
        f"; {checked.summary}"
    )
    logger.info("%s", message)
    return RegisterOutcome(
        "registered",
        message,
        spec.name,
        source.uri,
        registration.version,
        registration.alias,
        run_id,
        run_url(tracking, experiment_id, run_id),
        version_url(tracking, spec.name, registration.version),
        metrics,
        checked.summary,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.register", description=__doc__)
    parser.add_argument("source", help="an .onnx or .skops file, or an MLflow model URI or folder")
    parser.add_argument("--model", default=None, help="the model spec (default: MLOPS_MODEL_NAME)")
    args = parser.parse_args(argv)
    return print_outcome(lambda: register_flow(RegisterParameters(model=args.model, source=args.source)), "register")


if __name__ == "__main__":
    sys.exit(main())
