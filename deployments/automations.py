"""The automations that close the loop, defined in code and applied idempotently.

=====================  ===========================================  ==========================================
automation             trigger                                      action
=====================  ===========================================  ==========================================
retrain-on-drift       ``drift.detected`` / ``performance.degraded``  run ``train/triggered`` for that model
                       on a model; once per cooldown per model
release-challenger     ``model.registered`` with alias challenger   run ``release/challenger`` for that model
train-on-new-data      ``data.landed`` (the landing check)          run ``train/triggered`` for that model; once per
                                                                    cooldown per model
notify-on-trouble      ``data.rejected`` / ``rollout.rolled_back``   post to the ``mlops-notify`` webhook block
                       / ``performance.estimated_drop``
=====================  ===========================================  ==========================================

The cooldown is Prefect's own: a reactive trigger with ``threshold=1`` fires on the first event
and ignores the matching events of the next ``within`` (per model, ``for_each`` resource id).
"No second retrain while one runs" is the training deployment's concurrency limit (1, new runs
cancelled) in ``prefect.yaml``. Applying reads each automation by name and creates it, updates it
when it differs, or leaves it alone; automations tagged ``mlops`` that are no longer wanted
(e.g. the notification once the webhook is unset) are deleted.

    python -m deployments.automations [--release-params JSON] [--train-params JSON]
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from typing import Any, cast
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.events.actions import RunDeployment, SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.exceptions import ObjectNotFound

from mlops.settings import Settings, get_settings

TAG = "mlops"
TRAIN = "train/triggered"
RELEASE = "release/challenger"
NOTIFY_BLOCK = "mlops-notify"
MODELS = {"prefect.resource.id": "mlops.model.*"}
DATASETS = {"prefect.resource.id": "mlops.dataset.*"}
NOTICE = (
    "{{ event.event }} on {{ event.resource.name }} at {{ event.occurred }}\n"
    "{% for key, value in event.payload.items() %}{{ key }}: {{ value }}\n{% endfor %}"
)


# Actions take the model from the event that triggered them (Prefect renders these Jinja templates),
# so one set of automations serves every model: drift on model A retrains A, never B.
EVENT_MODEL = "{{ event.resource.name }}"


def for_the_event_model(parameters: dict[str, Any] | None, field: str) -> dict[str, Any]:
    """``parameters`` (``{"params": {...}}``) with the flow's model field set from the triggering event."""
    chosen = dict(parameters or {})
    chosen["params"] = {**dict(chosen.get("params") or {}), field: EVENT_MODEL}
    return chosen


class MissingDeploymentError(RuntimeError):
    """An automation's deployment is not registered on the Prefect server."""


def deployment_id(prefect: SyncPrefectClient, name: str) -> UUID:
    try:
        return prefect.read_deployment_by_name(name).id
    except ObjectNotFound as error:
        raise MissingDeploymentError(
            f"deployment {name} is not registered on {prefect.api_url}: run `prefect deploy --all` first"
        ) from error


def notify_block(url: str) -> UUID:
    """Create or update the webhook block notices go to; returns its block document id."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(
        name=NOTIFY_BLOCK,
        url=url,
        method="POST",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
    )
    return cast(UUID, block.save(NOTIFY_BLOCK, overwrite=True))


def desired(
    settings: Settings,
    train_id: UUID,
    release_id: UUID,
    notify_id: UUID | None,
    train_parameters: dict[str, Any] | None = None,
    release_parameters: dict[str, Any] | None = None,
) -> list[AutomationCore]:
    """The loop's automations for these deployments (and notification block, if any)."""
    cooldown = timedelta(minutes=settings.retrain_cooldown_minutes)
    train_parameters = for_the_event_model(train_parameters, "model")
    release_parameters = for_the_event_model(release_parameters, "model_name")
    wanted = [
        AutomationCore(
            name="retrain-on-drift",
            description=f"Drift or degradation on a model starts its training, at most once per {cooldown}.",
            tags=[TAG],
            trigger=EventTrigger(
                expect={"drift.detected", "performance.degraded"},
                match=MODELS,
                for_each={"prefect.resource.id"},
                posture=Posture.Reactive,
                threshold=1,
                within=cooldown,
            ),
            actions=[RunDeployment(source="selected", deployment_id=train_id, parameters=train_parameters)],
        ),
        AutomationCore(
            name="release-challenger",
            description="A version registered as challenger is built, smoke-tested and rolled out as a canary.",
            tags=[TAG],
            trigger=EventTrigger(
                expect={"model.registered"},
                match={**MODELS, "mlops.alias": "challenger"},
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=[RunDeployment(source="selected", deployment_id=release_id, parameters=release_parameters)],
        ),
        AutomationCore(
            name="train-on-new-data",
            description="New batches in the landing folder start a training (ingest, validate, train).",
            tags=[TAG],
            trigger=EventTrigger(
                expect={"data.landed"},
                match=DATASETS,
                for_each={"prefect.resource.id"},
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(minutes=settings.landing_cooldown_minutes),
            ),
            actions=[RunDeployment(source="selected", deployment_id=train_id, parameters=train_parameters)],
        ),
    ]
    if notify_id is not None:
        wanted.append(
            AutomationCore(
                name="notify-on-trouble",
                description="Rejected data, rolled-back releases and label-free accuracy drops are posted to the "
                "mlops-notify webhook.",
                tags=[TAG],
                trigger=EventTrigger(
                    expect={"data.rejected", "rollout.rolled_back", "performance.estimated_drop"},
                    match={"prefect.resource.id": "mlops.*"},
                    posture=Posture.Reactive,
                    threshold=1,
                    within=timedelta(0),
                ),
                actions=[
                    SendNotification(
                        block_document_id=notify_id,
                        subject="mlops: {{ event.event }} on {{ event.resource.name }}",
                        body=NOTICE,
                    )
                ],
            )
        )
    return wanted


def _comparable(automation: AutomationCore) -> dict[str, Any]:
    fields = set(AutomationCore.model_fields)
    dumped = automation.model_dump(mode="json", include=fields)
    dumped["trigger"].pop("id", None)
    for key in ("expect", "after", "for_each"):  # sets: their JSON order varies between processes
        dumped["trigger"][key] = sorted(dumped["trigger"].get(key) or [])
    return dumped


def apply(prefect: SyncPrefectClient, wanted: list[AutomationCore]) -> dict[str, str]:
    """Create, update or keep each wanted automation; delete other ``mlops`` ones. Returns name -> what happened."""
    done: dict[str, str] = {}
    for automation in wanted:
        existing = prefect.read_automations_by_name(automation.name)
        if not existing:
            prefect.create_automation(automation)
            done[automation.name] = "created"
            continue
        first, *extra = existing
        for duplicate in extra:  # created twice by a race: keep one
            prefect.delete_automation(duplicate.id)
        if _comparable(AutomationCore(**first.model_dump())) == _comparable(automation) and not extra:
            done[automation.name] = "unchanged"
        else:
            prefect.update_automation(first.id, automation)
            done[automation.name] = "updated"
    names = {automation.name for automation in wanted}
    for automation in prefect.read_automations():
        if TAG in automation.tags and automation.name not in names:
            prefect.delete_automation(automation.id)
            done[automation.name] = "deleted"
    return done


def apply_loop_automations(
    settings: Settings,
    train_parameters: dict[str, Any] | None = None,
    release_parameters: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Apply the loop's automations against the Prefect server in ``PREFECT_API_URL``."""
    notify_id = notify_block(settings.notify_webhook_url) if settings.notify_webhook_url else None
    with get_client(sync_client=True) as prefect:
        train_id, release_id = deployment_id(prefect, TRAIN), deployment_id(prefect, RELEASE)
        wanted = desired(settings, train_id, release_id, notify_id, train_parameters, release_parameters)
        return apply(prefect, wanted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.automations", description=__doc__)
    parser.add_argument("--train-params", type=json.loads, help="parameters of automated training runs (JSON)")
    parser.add_argument("--release-params", type=json.loads, help="parameters of automated release runs (JSON)")
    args = parser.parse_args(argv)
    try:
        done = apply_loop_automations(get_settings(), args.train_params, args.release_params)
    except MissingDeploymentError as error:
        print(error, file=sys.stderr)
        return 1
    for name, what in done.items():
        print(f"{name}: {what}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
