"""Canary rollout of the challenger behind the model's endpoint, gated on live metrics, with rollback.

1. **Reconcile** (also what makes a crashed rollout recoverable): the champion's deployment serves
   all traffic; a canary left over from an earlier run is drained and stopped, leftovers removed.
2. **Canary**: the challenger starts as its own deployment, must answer its known request
   (the smoke check), and joins the endpoint at weight 0. With ``shadow_seconds``, it first runs
   as a shadow: every request is mirrored to it, its answers compared and never returned.
3. **Steps**: its weight goes through ``steps`` (e.g. 10 → 25 → 50 → 100 %). Each step bakes until
   ``bake_seconds`` passed and the canary answered ``min_requests`` (at most ``bake_seconds x
   max_wait_factor``), then canary and stable are compared over that same window: error rate, p99
   latency, and the distribution of predictions (two-sample Kolmogorov-Smirnov: a failure needs
   both an effect above ``max_ks`` and significance, so small samples don't fail a good model).
   A classifier's labels are compared by Cramér's V of the predicted-class counts (chi-square, the
   same effect-and-significance rule), by agreement on mirrored traffic, and each class
   probability by KS — the probabilities read from what both deployments collected in the window.
4. **Promote** (every step passed): ``champion`` moves to the new version (who/why/figures), the
   old deployment drains and stops. **Roll back** (any step failed): canary weight 0, canary
   drained and stopped, ``challenger`` alias removed, the version tagged with the reason and figures.

Whichever way it ends, the registry's ``champion`` is the version taking all traffic.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
from mlflow.exceptions import MlflowException
from prefect import task
from scipy.stats import chi2_contingency, fisher_exact, ks_2samp

from mlops.policies import RolloutConfig
from serving.endpoint import Deployment, is_fault
from tasks.endpoint_admin import EndpointClient
from tasks.events import emit, run_logger
from tasks.registry import CHALLENGER, CHAMPION, PromotionError, PromotionIncomplete, record_promotion
from tasks.serving_bundle import fetch_bundle
from tasks.smoke import SmokeTestError, check_answers
from tasks.targets import DeploymentTarget
from tasks.tracking import alias_version, client

EVIDENCE_POLL_SECONDS = 0.5  # how often a step asks the router for its counters


class RolloutError(RuntimeError):
    """The endpoint or registry is in a state a rollout cannot start from."""


@dataclass(frozen=True)
class Window:
    """What one deployment did during a step."""

    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    predictions: tuple[float | str, ...] = ()
    agreement_compared: int = 0  # mirrored predictions compared with the answer the client got
    agreement_equal: int = 0
    probabilities: dict[str, tuple[float, ...]] = field(default_factory=dict)  # a classifier's, per class
    faults: dict[str, int] = field(default_factory=dict)  # the faults' status codes and counts

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def labels(self) -> list[str]:
        """A classifier's predicted labels (text labels; numbers are values or numeric labels)."""
        return [value for value in self.predictions if isinstance(value, str)]

    @property
    def agreement(self) -> float | None:
        return self.agreement_equal / self.agreement_compared if self.agreement_compared else None

    @classmethod
    def from_stats(cls, stats: dict[str, Any] | None) -> Window:
        if not stats:
            return cls(0, 0, 0.0, 0.0)
        agreement = stats.get("agreement") or {}
        codes = stats.get("codes") or {}
        return cls(
            int(stats["requests"]),
            int(stats["errors"]),
            float(stats["p50_ms"]),
            float(stats["p99_ms"]),
            tuple(stats["predictions"]),
            int(agreement.get("compared", 0)),
            int(agreement.get("equal", 0)),
            faults={code: int(n) for code, n in sorted(codes.items()) if is_fault(int(code))},
        )

    def figures(self) -> dict[str, float]:
        return {
            "requests": self.requests,
            "error_rate": round(self.error_rate, 4),
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
        }


@dataclass(frozen=True)
class StepReport:
    step: int
    weight: int
    seconds: float
    passed: bool
    reasons: tuple[str, ...]
    canary: dict[str, float]
    stable: dict[str, float]
    ks: float | None

    def row(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "canary weight %": self.weight,
            "seconds": round(self.seconds, 1),
            "verdict": "pass" if self.passed else "FAIL",
            "canary req / err / p99": f"{self.canary['requests']:.0f} / {self.canary['error_rate']:.2%} / "
            f"{self.canary['p99_ms']:.1f} ms",
            "stable req / err / p99": f"{self.stable['requests']:.0f} / {self.stable['error_rate']:.2%} / "
            f"{self.stable['p99_ms']:.1f} ms",
            "KS": "-" if self.ks is None else f"{self.ks:.3f}",
            "why": "; ".join(self.reasons) or "all checks passed",
        }


@dataclass(frozen=True)
class Canary:
    """The challenger's deployment and the champion's it is compared with."""

    model_name: str
    version: str
    name: str
    stable: str
    stable_version: str
    collected: Path | None = None  # where both deployments collect their requests (a classifier's probabilities)
    classes: tuple[str, ...] = ()

    def with_probabilities(self, windows: dict[str, Window], since: float) -> dict[str, Window]:
        """``windows`` (by deployment name) with each version's class probabilities collected since ``since``."""
        if not self.classes or self.collected is None or not self.collected.is_dir():
            return windows
        from tasks.collected import load_requests

        names = [f"probability.{label}" for label in self.classes]
        try:
            rows = load_requests(self.collected, since, None, None, names)
        except ValueError:  # a collection without probabilities: nothing to compare
            return windows
        if not set(names) <= set(rows.columns):
            return windows
        found = dict(windows)
        for name, version in ((self.name, self.version), (self.stable, self.stable_version)):
            mine = rows[rows["model_version"] == version]
            found[name] = replace(
                windows[name],
                probabilities={label: tuple(mine[n]) for label, n in zip(self.classes, names, strict=True)},
            )
        return found


@dataclass(frozen=True)
class RolloutOutcome:
    status: Literal["promoted", "rolled_back", "nothing_to_do"]
    model_name: str
    version: str | None
    champion: str
    message: str
    steps: list[dict[str, Any]] = field(default_factory=list)


def deployment_name(model_name: str, version: str) -> str:
    """``<model>-v<version>``: processes, pid files and containers of two models never share a name."""
    return f"{model_name}-v{version}"


def _fault_excess(canary: Window, stable: Window, config: RolloutConfig) -> str | None:
    """Why the canary's faults (5xx, 422) are its own, or None: its share exceeds stable's on the same window by
    more than ``max_error_rate`` and — when stable has faults too (requests that fail everywhere, such as a
    client's poison burst split between the two by chance) — the difference is significant (one-sided Fisher
    exact test at ``ks_alpha``)."""
    allowed = stable.error_rate + config.max_error_rate
    if canary.error_rate <= allowed:
        return None
    faults = ", ".join(f"{n}x {code}" for code, n in canary.faults.items())
    figures = (
        f"canary error rate {canary.error_rate:.1%} > {allowed:.1%} "
        f"(stable's {stable.error_rate:.1%} + {config.max_error_rate:.1%})"
        + (f"; its faults: {faults}" if faults else "")
    )
    if not stable.errors:
        return figures
    table = [[canary.errors, canary.requests - canary.errors], [stable.errors, stable.requests - stable.errors]]
    pvalue = float(fisher_exact(table, alternative="greater").pvalue)
    return f"{figures}, p={pvalue:.1e}" if pvalue < config.ks_alpha else None


def analyse(
    canary: Window, stable: Window, config: RolloutConfig, agreement_needed: bool = False
) -> tuple[list[str], float | None]:
    """Reasons the canary fails against the stable window (empty: it passes), and the distance between their
    predictions: KS for values, Cramér's V of the predicted-class counts (chi-square) for a classifier's labels.
    Either fails only when large (``max_ks``) and significant (``ks_alpha``); a classifier canary that saw mirrored
    traffic also fails when it agrees with the answers clients got less often than ``min_label_agreement``;
    with ``agreement_needed`` (a classifier's shadow phase) too few compared rows are no verdict, never a pass."""
    reasons = []
    if reason := _fault_excess(canary, stable, config):
        reasons.append(reason)
    if stable.requests:
        allowed = max(stable.p99_ms * config.max_p99_ratio, stable.p99_ms + config.p99_slack_ms)
        if canary.p99_ms > allowed:
            reasons.append(f"canary p99 {canary.p99_ms:.1f} ms > {allowed:.1f} ms (stable p99 {stable.p99_ms:.1f} ms)")
    distance, pvalue, what = _prediction_distance(canary, stable)
    if config.compare_predictions and distance is not None and distance > config.max_ks and pvalue < config.ks_alpha:
        reasons.append(
            f"canary predictions differ from stable: {what} {distance:.2f} > {config.max_ks} (p={pvalue:.1e})"
        )
    for label, values in canary.probabilities.items() if config.compare_predictions else ():
        theirs = stable.probabilities.get(label, ())
        if len(values) < 2 or len(theirs) < 2:
            continue
        result = ks_2samp(np.asarray(values), np.asarray(theirs))
        if result.statistic > config.max_ks and result.pvalue < config.ks_alpha:
            reasons.append(
                f"canary probability of {label} differs from stable: KS {result.statistic:.2f} > {config.max_ks} "
                f"(p={result.pvalue:.1e})"
            )
    agreement = canary.agreement
    if (
        config.compare_predictions
        and agreement is not None
        and canary.labels
        and canary.agreement_compared >= config.min_agreement_rows
        and agreement < config.min_label_agreement
    ):
        reasons.append(
            f"canary labels agree with the answers given on {agreement:.1%} of {canary.agreement_compared} mirrored "
            f"rows (< {config.min_label_agreement:.0%})"
        )
    if (
        agreement_needed
        and config.compare_predictions
        and not reasons
        and canary.agreement_compared < config.min_agreement_rows
    ):
        reasons.append(
            f"only {canary.agreement_compared} mirrored rows compared with the answers given "
            f"(need {config.min_agreement_rows}): no verdict"
        )
    if not reasons and canary.requests < config.min_requests:
        reasons.append(f"only {canary.requests} canary requests in the step (need {config.min_requests}): no verdict")
    return reasons, distance


def _prediction_distance(canary: Window, stable: Window) -> tuple[float | None, float, str]:
    """(distance, p-value, name): Cramér's V of label counts when the canary answers labels, else KS of values."""
    mine, theirs = canary.labels, stable.labels
    if mine and theirs:
        classes = sorted(set(mine) | set(theirs))
        table = np.array([[mine.count(c) for c in classes], [theirs.count(c) for c in classes]])
        if len(classes) < 2:
            return 0.0, 1.0, "Cramér's V"
        chi2, pvalue, _, _ = chi2_contingency(table, correction=False)
        return float(np.sqrt(chi2 / table.sum())), float(pvalue), "Cramér's V"
    numbers = [p for p in canary.predictions if not isinstance(p, str)]
    reference = [p for p in stable.predictions if not isinstance(p, str)]
    if len(numbers) >= 2 and len(reference) >= 2:
        result = ks_2samp(np.asarray(numbers, dtype=float), np.asarray(reference, dtype=float))
        return float(result.statistic), float(result.pvalue), "KS"
    return None, 1.0, "KS"


@task
def reconcile_endpoint(
    endpoint: EndpointClient, target: DeploymentTarget, tracking_uri: str, model_name: str
) -> tuple[str, str | None]:
    """Make the champion's deployment take all traffic and remove anything else; return (champion, challenger).

    This is also the recovery of a rollout that crashed midway: re-running starts from here.
    """
    log = run_logger(__name__)
    champion = alias_version(tracking_uri, model_name, CHAMPION)
    if champion is None:
        raise RolloutError(f"{model_name} has no champion: train one first")
    challenger = alias_version(tracking_uri, model_name, CHALLENGER)
    stable = deployment_name(model_name, champion)
    table = endpoint.table()
    listed = table.get(stable)
    if listed is None or not _answers(listed.url):
        # not there, or listed but gone (its process stopped by `mlops down`, its container removed): start it
        url = target.start(stable, model_name, champion)
        if listed is None:
            endpoint.add(Deployment(stable, url, champion, weight=0))
        else:
            endpoint.move(stable, url)
        log.info("started the champion's deployment %s (version %s) at %s", stable, champion, url)
    table = endpoint.set_weights({d.name: (100 if d.name == stable else 0) for d in endpoint.table().deployments})
    for leftover in [d.name for d in table.deployments if d.name != stable]:
        drained = endpoint.remove(leftover)
        target.stop(leftover)
        log.info("removed leftover deployment %s (%s)", leftover, "drained" if drained else "drain timed out")
    return champion, challenger


def _answers(url: str) -> bool:
    """Whether a deployment's server answers its readiness probe."""
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


@task
def start_canary(
    endpoint: EndpointClient,
    target: DeploymentTarget,
    tracking_uri: str,
    model_name: str,
    version: str,
    champion: str,
    shadow: bool = False,
) -> Canary:
    """Start the challenger's deployment, check its known answer, and add it at weight 0 (or as a shadow)."""
    name = deployment_name(model_name, version)
    url = target.start(name, model_name, version)
    with tempfile.TemporaryDirectory() as scratch:
        _, metadata = fetch_bundle(tracking_uri, f"models:/{model_name}/{version}", Path(scratch))
    try:
        check_answers(url, metadata, timeout=10)
    except Exception as error:
        target.stop(name)
        if isinstance(error, SmokeTestError):
            reject_challenger(tracking_uri, model_name, version, f"before any traffic: {error}")
        raise
    endpoint.add(Deployment(name, url, version, weight=0, shadow=shadow))
    emit("rollout.started", "model", model_name, {"version": version, "champion": champion, "deployment": name})
    classes = tuple(str(label) for label in metadata.classes)
    stable = deployment_name(model_name, champion)
    return Canary(model_name, version, name, stable, champion, target.collected(model_name), classes)


def wait_for_evidence(
    endpoint: EndpointClient, name: str, seconds: float, config: RolloutConfig, fail_fast: bool, agreement: bool = False
) -> float:
    """Wait until deployment ``name`` has served ``seconds`` and ``min_requests`` — with ``agreement``, also
    ``min_agreement_rows`` mirrored rows compared with the answers given — (at most ``max_wait_factor`` times
    ``seconds``); with ``fail_fast``, stop as soon as its errors exceed what the whole step could tolerate.
    Returns when the wait started (the window to judge)."""
    started, clock = time.time(), time.monotonic()  # the window's start (the router's clock); time waited
    before = _split_totals(endpoint.totals(), name)
    bake_end, deadline = clock + seconds, clock + seconds * config.max_wait_factor
    while True:
        moment = time.monotonic()  # wake at the bake's end (then the deadline), not up to a poll later
        left = (bake_end if bake_end > moment else deadline) - moment
        time.sleep(left if 0 < left < EVIDENCE_POLL_SECONDS else EVIDENCE_POLL_SECONDS)
        now = _split_totals(endpoint.totals(), name)
        (requests, errors), (others, others_errors) = (
            (now[side][0] - before[side][0], now[side][1] - before[side][1]) for side in (0, 1)
        )
        # faults beyond the rate the other deployments answered with meanwhile: a burst of requests that fail
        # everywhere is not the canary's fault
        excess = errors - requests * (others_errors / others if others else 0.0)
        tolerated = config.max_error_rate * max(requests, config.min_requests)
        if (fail_fast and excess >= 5 and excess > tolerated) or time.monotonic() >= deadline:
            return started
        enough = time.monotonic() - clock >= seconds and requests >= config.min_requests
        if enough and (not agreement or _compared(endpoint, name, started) >= config.min_agreement_rows):
            return started


def _split_totals(totals: dict[str, dict[str, int]], name: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """(requests, faults) of deployment ``name`` and of all the others together."""
    mine = totals.get(name, {})
    others = [stats for other, stats in totals.items() if other != name]
    return (
        (int(mine.get("requests", 0)), int(mine.get("errors", 0))),
        (sum(int(s.get("requests", 0)) for s in others), sum(int(s.get("errors", 0)) for s in others)),
    )


def _compared(endpoint: EndpointClient, name: str, since: float) -> int:
    return int((endpoint.stats(since).get(name) or {}).get("agreement", {}).get("compared", 0))


@task
def bake_step(
    endpoint: EndpointClient, canary: Canary, step: int, weight: int, reference: Window, config: RolloutConfig
) -> tuple[StepReport, Window]:
    """Move ``weight`` % to the canary, observe, and judge; returns the report and the stable window."""
    log = run_logger(__name__)
    weights = {canary.name: weight, canary.stable: 100 - weight}
    endpoint.set_weights(weights)
    started = wait_for_evidence(endpoint, canary.name, config.bake_seconds, config, fail_fast=True)
    stats = endpoint.stats(started)
    windows = canary.with_probabilities(
        {name: Window.from_stats(stats.get(name)) for name in (canary.name, canary.stable)}, started
    )
    window, stable = windows[canary.name], windows[canary.stable]
    compared = stable if stable.requests >= config.min_requests else reference
    reasons, ks = analyse(window, compared, config)
    report = StepReport(
        step, weight, time.time() - started, not reasons, tuple(reasons), window.figures(), compared.figures(), ks
    )
    log.info("step %d (%d%% canary): %s", step, weight, "; ".join(reasons) or "passed")
    emit("rollout.step", "model", canary.model_name, {"version": canary.version, **report.row()})
    return report, compared


@task
def shadow_phase(endpoint: EndpointClient, canary: Canary, config: RolloutConfig, seconds: float) -> StepReport:
    """Mirror all traffic to the canary (already added as a shadow), judge it, then make it a live deployment."""
    log = run_logger(__name__)
    endpoint.set_weights({}, mirror=1.0)
    classifier = bool(canary.classes)  # its shadow phase is there to compare labels: it needs that evidence
    started = wait_for_evidence(endpoint, canary.name, seconds, config, fail_fast=False, agreement=classifier)
    endpoint.set_weights({}, mirror=0.0)
    stats = endpoint.stats(started)
    windows = canary.with_probabilities(
        {name: Window.from_stats(stats.get(name)) for name in (canary.name, canary.stable)}, started
    )
    window, stable = windows[canary.name], windows[canary.stable]
    reasons, ks = analyse(window, stable, config, agreement_needed=classifier)
    seconds = time.time() - started
    report = StepReport(0, 0, seconds, not reasons, tuple(reasons), window.figures(), stable.figures(), ks)
    log.info("shadow phase: %s", "; ".join(reasons) or "passed")
    emit("rollout.step", "model", canary.model_name, {"version": canary.version, "phase": "shadow", **report.row()})
    if report.passed:  # from shadow to a live deployment at weight 0: same process, new table entry
        url = next(d.url for d in endpoint.table().deployments if d.name == canary.name)
        endpoint.remove(canary.name)
        endpoint.add(Deployment(canary.name, url, canary.version, weight=0))
    return report


@task
def promote_canary(
    endpoint: EndpointClient, target: DeploymentTarget, tracking_uri: str, canary: Canary, steps: list[StepReport]
) -> str:
    """Champion alias to the canary's version (it takes 100 % already), then retire the old deployment.

    The champion alias and the deployment taking all traffic agree whatever fails: when MLflow cannot move the
    alias, traffic goes back to the stable deployment (still the champion) and the canary is stopped; when the
    alias moved but its tags could not be written, the canary stays the one taking traffic.

    Raises:
        PromotionError: Nothing was promoted (the message says why, e.g. the tracking server unreachable); traffic
            is back on the champion.
    """
    log = run_logger(__name__)
    figures = json.dumps([s.row() for s in steps])
    try:
        record_promotion(
            tracking_uri,
            canary.model_name,
            canary.version,
            reason=f"canary rollout passed {len(steps)} steps: {', '.join(f'{s.weight}%' for s in steps)}",
            actor="rollout",
        )
        tracker = client(tracking_uri)
        tracker.set_model_version_tag(canary.model_name, canary.version, "rollout", "promoted")
        tracker.set_model_version_tag(canary.model_name, canary.version, "rollout_steps", figures[:5000])
    except PromotionError as error:
        endpoint.set_weights({canary.name: 0, canary.stable: 100})
        endpoint.remove(canary.name)
        target.stop(canary.name)
        raise PromotionError(
            f"{error}; the canary passed every step, but version {canary.stable_version} stays the champion and "
            f"takes all traffic again: release version {canary.version} again once MLflow answers"
        ) from error
    except (PromotionIncomplete, MlflowException) as error:
        log.warning("version %s is the champion; recording the rollout in MLflow failed: %s", canary.version, error)
    endpoint.set_weights({canary.name: 100, canary.stable: 0})
    endpoint.remove(canary.stable)
    target.stop(canary.stable)
    emit("rollout.promoted", "model", canary.model_name, {"version": canary.version, "previous": canary.stable_version})
    return canary.version


@task
def rollback_canary(
    endpoint: EndpointClient, target: DeploymentTarget, tracking_uri: str, canary: Canary, failed: StepReport
) -> str:
    """Canary weight to 0 at once, drain and stop it, drop the challenger alias, record why."""
    endpoint.set_weights({canary.name: 0, canary.stable: 100})
    endpoint.remove(canary.name)
    target.stop(canary.name)
    reason = f"step {failed.step} ({failed.weight}% canary): {'; '.join(failed.reasons)}"
    figures = {"canary": failed.canary, "stable": failed.stable, "ks": failed.ks}
    return reject_challenger(tracking_uri, canary.model_name, canary.version, reason, figures)


def reject_challenger(
    tracking_uri: str, model_name: str, version: str, reason: str, figures: dict[str, Any] | None = None
) -> str:
    """The registry side of a rollback: no ``challenger`` alias on the version, and tags saying why."""
    tracker = client(tracking_uri)
    if alias_version(tracking_uri, model_name, CHALLENGER) == version:
        tracker.delete_registered_model_alias(model_name, CHALLENGER)
    tracker.set_model_version_tag(model_name, version, "rollout", "rolled_back")
    tracker.set_model_version_tag(model_name, version, "rollout_reason", reason[:5000])
    tracker.set_model_version_tag(model_name, version, "rollout_figures", json.dumps(figures or {}))
    emit("rollout.rolled_back", "model", model_name, {"version": version, "reason": reason, **(figures or {})})
    return reason
