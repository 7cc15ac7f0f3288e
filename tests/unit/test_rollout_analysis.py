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
        (window(errors=5), "canary error rate 2.5% > 1.0% (stable's 0.0% + 1.0%)"),
        (window(p99=30.0), "canary p99 30.0 ms > 14.0 ms"),
        (window(shift=150), "canary predictions differ from stable"),
        (window(requests=10, n=10), "only 10 canary requests"),
    ],
)
def test_each_threshold_fails_the_canary_with_its_figures(canary: Window, why: str) -> None:
    reasons, _ = analyse(canary, window(), CONFIG)
    assert len(reasons) == 1 and why in reasons[0]


def test_errors_that_stable_answers_as_often_are_not_the_canarys_fault() -> None:
    """A burst of requests that fail on every deployment does not roll a healthy canary back, even when chance sends
    the canary more of them; faults of the canary's own on top of it do."""
    assert analyse(window(errors=40), window(errors=40), CONFIG)[0] == []
    assert analyse(window(errors=58), window(errors=40), CONFIG)[0] == []  # 29 % against 20 %: p = 0.02
    reasons, _ = analyse(window(errors=100), window(errors=40), CONFIG)
    assert len(reasons) == 1 and reasons[0].startswith("canary error rate 50.0% > 21.0% (stable's 20.0% + 1.0%), p=")
    reasons, _ = analyse(window(errors=4), window(errors=0), CONFIG)  # stable clean: 2 % is the canary's own
    assert reasons == ["canary error rate 2.0% > 1.0% (stable's 0.0% + 1.0%)"]


def test_the_canarys_faults_are_named_by_status_code() -> None:
    """The reason says which answers counted against the canary (router 502/504s read differently from 500s)."""
    stats = {"requests": 200, "errors": 5, "p50_ms": 1.0, "p99_ms": 4.0, "predictions": [150.0] * 195,
             "codes": {"200": 190, "400": 5, "502": 3, "422": 1, "500": 1}}  # fmt: skip
    canary = Window.from_stats(stats)
    assert canary.faults == {"422": 1, "500": 1, "502": 3}
    reasons, _ = analyse(canary, window(), CONFIG)
    assert reasons[0] == "canary error rate 2.5% > 1.0% (stable's 0.0% + 1.0%); its faults: 1x 422, 1x 500, 3x 502"


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


def labels(n: int, malignant: float, seed: int = 1) -> tuple[str, ...]:
    draws = np.random.default_rng(seed).random(n)
    return tuple("malignant" if d < malignant else "benign" for d in draws)


def test_a_classifier_canary_is_judged_on_its_predicted_classes_by_chi_square() -> None:
    stable = Window(300, 0, 1.0, 4.0, labels(300, 0.35))
    like = Window(300, 0, 1.0, 4.0, labels(300, 0.35, seed=2))
    reasons, distance = analyse(like, stable, CONFIG)
    assert reasons == [] and distance is not None and distance < 0.1
    flipped = Window(300, 0, 1.0, 4.0, labels(300, 0.65, seed=2))  # the classes swapped
    reasons, distance = analyse(flipped, stable, CONFIG)
    assert distance is not None and distance > 0.3
    assert len(reasons) == 1 and "Cramér's V" in reasons[0]


def test_a_classifier_canary_that_disagrees_on_mirrored_rows_fails_and_agreement_needs_enough_rows() -> None:
    stable = Window(300, 0, 1.0, 4.0, labels(300, 0.35))
    disagreeing = Window(300, 0, 1.0, 4.0, labels(300, 0.35, seed=2), agreement_compared=300, agreement_equal=240)
    reasons, _ = analyse(disagreeing, stable, CONFIG)
    assert reasons == ["canary labels agree with the answers given on 80.0% of 300 mirrored rows (< 90%)"]
    too_few = Window(300, 0, 1.0, 4.0, labels(300, 0.35, seed=2), agreement_compared=10, agreement_equal=5)
    assert analyse(too_few, stable, CONFIG)[0] == []
    relaxed = CONFIG.model_copy(update={"compare_predictions": False})
    assert analyse(disagreeing, stable, relaxed)[0] == []


def test_a_classifier_canary_whose_probabilities_moved_fails_on_that_class_even_with_the_same_labels() -> None:
    labels = tuple(RNG.choice(["benign", "malignant"], 300))

    def classifier(confidence: float) -> Window:
        first = np.clip(RNG.normal(confidence, 0.05, 300), 0, 1)
        return Window(300, 0, 1.0, 4.0, labels, probabilities={"benign": tuple(first), "malignant": tuple(1 - first)})

    reasons, _ = analyse(classifier(0.7), classifier(0.7), CONFIG)
    assert reasons == []
    reasons, _ = analyse(classifier(0.55), classifier(0.7), CONFIG)  # same labels, less sure of them
    assert [reason.split(":")[0] for reason in reasons] == [
        "canary probability of benign differs from stable",
        "canary probability of malignant differs from stable",
    ]
