"""The MLflow model registry: register a better candidate, promote a version to champion.

Aliases only (``champion``, ``challenger``), never the deprecated stages.
"""

from __future__ import annotations

import getpass
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from mlflow.exceptions import MlflowException
from prefect import task

from tasks.evaluate import CHALLENGER, CHAMPION, Comparison
from tasks.events import emit
from tasks.export import OnnxExport
from tasks.tracking import alias_version, client, describe_failure
from tasks.train import Candidate, Lineage, record_outcome


class PromotionIncomplete(RuntimeError):
    """The champion alias moved, but the tags recording the promotion could not all be written."""


class PromotionError(ValueError):
    """A version cannot be promoted: it does not exist or did not pass validation."""


@dataclass(frozen=True)
class Registration:
    """A registered model version and the alias it received."""

    model_name: str
    version: str
    alias: str
    run_id: str


@dataclass(frozen=True)
class Promotion:
    """A move of the ``champion`` alias."""

    model_name: str
    version: str
    previous: str | None
    actor: str
    reason: str
    at: str


@task(retries=2, retry_delay_seconds=2)
def register_candidate(
    candidate: Candidate,
    comparison: Comparison,
    lineage: Lineage,
    export: OnnxExport,
    tracking_uri: str,
    model_name: str,
    extra_tags: dict[str, str] | None = None,
    forced: str | None = None,
) -> Registration:
    """Register a candidate that beat the champion as ``challenger`` (or as ``champion`` if there is none).

    Args:
        extra_tags: More tags for the version (a model registered from outside says where it came from).
        forced: Why a candidate that is not better is registered all the same (recorded as ``forced``).

    Raises:
        ValueError: The comparison says the candidate is not better (and nothing forces it).
    """
    if not export.parity.passed:
        raise ValueError(
            f"candidate of run {candidate.run_id} has no ONNX export that passed parity: {export.parity.summary}"
        )
    if not comparison.better and not forced:
        raise ValueError(f"candidate of run {candidate.run_id} is not better than the champion: {comparison.summary}")
    tracker = client(tracking_uri)
    try:
        tracker.get_registered_model(model_name)
    except MlflowException:
        tracker.create_registered_model(model_name, description="Managed by the mlops-loop training flow.")
    tags = {
        **lineage.tags(),
        **export.tags(),
        "run_id": candidate.run_id,
        "model_family": candidate.family,
        "metrics": json.dumps(candidate.metrics, sort_keys=True),
        "metrics_vs_champion": json.dumps(comparison.to_dict(), sort_keys=True, default=str),
        "champion_at_registration": comparison.champion_version or "none",
        **(extra_tags or {}),
        **({"forced": forced} if forced else {}),
    }
    version = tracker.create_model_version(
        model_name,
        candidate.model_uri,
        run_id=candidate.run_id,
        model_id=candidate.model_id,
        tags=tags,
        description=f"{candidate.family} {_provenance(tags, lineage)}: {comparison.summary}",
    )
    number = str(version.version)
    if comparison.champion_version is None:
        actor = tags.get("registered_by", "training-flow")
        record_promotion(tracking_uri, model_name, number, "first model: no champion existed", actor)
        alias = CHAMPION
    else:
        tracker.set_registered_model_alias(model_name, CHALLENGER, number)
        alias = CHALLENGER
    record_outcome(tracking_uri, candidate.run_id, f"registered:{number}", f"{model_name} version {number} as {alias}")
    emit(
        "model.registered",
        "model",
        model_name,
        {"version": number, "alias": alias, "run_id": candidate.run_id, **candidate.metrics},
        labels={"mlops.alias": alias, "mlops.version": number},
    )
    return Registration(model_name, number, alias, candidate.run_id)


def _provenance(tags: dict[str, str], lineage: Lineage) -> str:
    if tags.get("trained_outside") == "true":
        return f"registered from {tags.get('source_uri', 'outside')}"
    return f"trained on dataset {lineage.dataset_digest[:12]}"


@task(retries=2, retry_delay_seconds=2)
def keep_champion(candidate: Candidate, comparison: Comparison, tracking_uri: str, model_name: str) -> str:
    """Record that the candidate lost: nothing is registered, the champion stays.

    Returns:
        The message saying so, with the numbers.
    """
    message = f"champion kept: version {comparison.champion_version} stays; {comparison.summary}"
    record_outcome(tracking_uri, candidate.run_id, "kept", message)
    emit(
        "model.kept",
        "model",
        model_name,
        {
            "champion_version": comparison.champion_version,
            "run_id": candidate.run_id,
            "comparison": comparison.to_dict(),
        },
    )
    return message


def record_promotion(tracking_uri: str, model_name: str, version: str, reason: str, actor: str) -> Promotion:
    """Move ``champion`` to the version and record who, why and when.

    Raises:
        PromotionError: Nothing changed: the version does not exist, did not pass validation, or MLflow failed (the
            message says how: "tracking server unreachable" when it was).
        PromotionIncomplete: The alias moved (the version is the champion) but the tags recording it failed.
    """
    tracker = client(tracking_uri)
    try:
        model_version = tracker.get_model_version(model_name, version)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            raise PromotionError(f"model {model_name!r} has no version {version!r}") from error
        raise PromotionError(
            f"{model_name} version {version} not promoted: {describe_failure(tracking_uri, error)}"
        ) from error
    status = model_version.tags.get("validation_status")
    if status != "passed":
        raise PromotionError(
            f"{model_name} version {version} cannot be promoted: its validation status is {status or 'missing'}"
        )
    now = datetime.now(UTC).isoformat()
    try:
        previous = alias_version(tracking_uri, model_name, CHAMPION)
        tracker.set_registered_model_alias(model_name, CHAMPION, version)  # the promotion itself
    except MlflowException as error:
        raise PromotionError(
            f"{model_name} version {version} not promoted: {describe_failure(tracking_uri, error)}"
        ) from error
    try:
        for key, value in {
            "promoted_by": actor,
            "promoted_at": now,
            "promotion_reason": reason,
            "previous_champion": previous or "none",
        }.items():
            tracker.set_model_version_tag(model_name, version, key, value)
        if previous is not None and previous != version:
            tracker.set_model_version_tag(model_name, previous, "superseded_by", version)
        if alias_version(tracking_uri, model_name, CHALLENGER) == version:
            tracker.delete_registered_model_alias(model_name, CHALLENGER)
    except MlflowException as error:
        raise PromotionIncomplete(
            f"{model_name} version {version} is the champion, but recording who and why failed: "
            f"{describe_failure(tracking_uri, error)}"
        ) from error
    return Promotion(model_name, version, previous, actor, reason, now)


@task(retries=2, retry_delay_seconds=2)
def promote(tracking_uri: str, model_name: str, version: str, reason: str, actor: str | None = None) -> Promotion:
    """Make a validated version the champion, recording who promoted it, why and when."""
    return record_promotion(tracking_uri, model_name, str(version), reason, actor or getpass.getuser())
