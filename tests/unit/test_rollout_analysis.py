"""The canary verdict on its own: thresholds, significance, and what counts as enough traffic."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from tasks.rollout import RolloutConfig, Window, analyse

CONFIG = RolloutConfig(min_requests=30)
RNG = np.random.default_rng(0)


def window(requests: int = 200, errors: int = 0, p99: float = 4.0, shift: float = 0.0, n: int = 200) -> Window:
    return Window(requests, errors, 1.0, p99, tuple(RNG.normal(150 + shift, 50, n)))


def test_a_canary_like_the_stable_passes() -> None:
    reasons, ks = analyse(window(), window(), CONFIG)
    assert reasons == [] and ks is not None and ks < 0.2


@pytest.mark.parametrize(
    ("canary", "why"),
    [
        (window(errors=5), "canary error rate 2.5% > 1.0%"),
        (window(p99=30.0), "canary p99 30.0 ms > 14.0 ms"),
        (window(shift=150), "canary predictions differ from stable"),
        (window(requests=10, n=10), "only 10 canary requests"),
    ],
)
def test_each_threshold_fails_the_canary_with_its_figures(canary: Window, why: str) -> None:
    reasons, _ = analyse(canary, window(), CONFIG)
    assert len(reasons) == 1 and why in reasons[0]


def test_a_large_distance_on_a_tiny_sample_is_not_significant_enough_to_fail() -> None:
    canary = Window(31, 0, 1.0, 4.0, (400.0, 410.0))  # two predictions far away: KS 1.0, p ~ 1e-4
    reasons, ks = analyse(canary, window(), CONFIG.model_copy(update={"ks_alpha": 1e-5}))
    assert ks == 1.0 and reasons == []


def test_moved_predictions_are_only_reported_when_comparison_is_off() -> None:
    reasons, ks = analyse(window(shift=150), window(), CONFIG.model_copy(update={"compare_predictions": False}))
    assert reasons == [] and ks is not None and ks > 0.8


def test_steps_must_climb_to_100() -> None:
    for steps in ([10, 50], [50, 10, 100], [0, 100], [10, 10, 100], []):
        with pytest.raises(ValidationError, match="steps must increase"):
            RolloutConfig(steps=steps)
