"""The automations' definitions: what triggers what, and an equality that ignores the order of sets."""

from __future__ import annotations

import uuid
from datetime import timedelta

from deployments.automations import _comparable, desired
from mlops.settings import Settings


def test_the_loop_automations_and_their_cooldowns() -> None:
    settings = Settings(retrain_cooldown_minutes=30, landing_cooldown_minutes=5)
    train, release, notify = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    wanted = {a.name: a for a in desired(settings, train, release, notify, release_parameters={"params": {}})}
    assert set(wanted) == {"retrain-on-drift", "release-challenger", "train-on-new-data", "notify-on-trouble"}
    retrain = wanted["retrain-on-drift"].trigger
    assert retrain.expect == {"drift.detected", "performance.degraded"}  # type: ignore[attr-defined]
    assert retrain.within == timedelta(minutes=30) and retrain.for_each == {"prefect.resource.id"}  # type: ignore[attr-defined]
    assert wanted["retrain-on-drift"].actions[0].deployment_id == train  # type: ignore[union-attr]
    release_trigger = wanted["release-challenger"].trigger
    assert release_trigger.match.root["mlops.alias"] == "challenger"  # type: ignore[attr-defined]
    # Every action takes the model from the event that triggered it: one set of automations for every model.
    model = "{{ event.resource.name }}"
    assert wanted["release-challenger"].actions[0].parameters == {"params": {"model_name": model}}  # type: ignore[union-attr]
    assert wanted["retrain-on-drift"].actions[0].parameters == {"params": {"model": model}}  # type: ignore[union-attr]
    assert wanted["train-on-new-data"].actions[0].parameters == {"params": {"model": model}}  # type: ignore[union-attr]
    assert wanted["train-on-new-data"].trigger.within == timedelta(minutes=5)  # type: ignore[attr-defined]
    assert "notify-on-trouble" not in {a.name for a in desired(settings, train, release, None)}


def test_equality_ignores_set_order() -> None:
    settings = Settings()
    ids = uuid.uuid4(), uuid.uuid4(), None
    first, second = desired(settings, *ids)[0], desired(settings, *ids)[0]
    reordered = first.model_copy(deep=True)
    reordered.trigger.expect = set(reversed(sorted(first.trigger.expect)))  # type: ignore[attr-defined]
    assert _comparable(first) == _comparable(second) == _comparable(reordered)
    changed = first.model_copy(update={"description": "else"})
    assert _comparable(changed) != _comparable(first)
