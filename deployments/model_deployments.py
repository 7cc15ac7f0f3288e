"""Each model's own Prefect deployments, written from its spec beside the shared ones of ``prefect.yaml``.

For every spec in ``MLOPS_MODELS_DIR``:

- ``train/<model>``: the training flow for that model, on the spec's ``schedules.train``;
- ``monitor-model/<model>``: the monitoring flow for that model, on ``schedules.monitor``.

They take the work pool and concurrency limit of the shared deployment of the same flow
(``train/triggered``, ``monitor/all-models``), so a model's schedule can be paused, and its runs
found, in the Prefect UI by its name. The shared deployments stay for what serves every model: the
automations (which pass the model of the event) and runs by hand.

    python -m deployments.model_deployments [--base prefect.yaml] [--output FILE]

writes the shared deployments plus each model's to one file for ``prefect deploy --all
--prefect-file FILE`` (``mlops deploy`` does this for the local stack).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import yaml

from mlops.settings import Settings, get_settings
from mlops.spec import ModelSpec, list_specs

PROJECT = Path(__file__).resolve().parents[1]
TRAIN_ENTRYPOINT = "flows/train.py:train_flow"
MONITOR_ENTRYPOINT = "flows/monitor.py:monitor_flow"
SHARED_MONITOR_ENTRYPOINT = "flows/monitor_all.py:monitor_all_flow"


class ModelDeploymentError(ValueError):
    """A model's deployment cannot be written (its name is taken, the base file lacks a shared one)."""


def _shared(project: dict[str, Any], entrypoint: str) -> dict[str, Any]:
    found = [d for d in project.get("deployments") or [] if d.get("entrypoint") == entrypoint]
    if not found:
        raise ModelDeploymentError(f"no shared deployment of {entrypoint} to take the work pool from")
    return found[0]


def _deployment(
    like: dict[str, Any],
    name: str,
    entrypoint: str,
    params: dict[str, Any],
    cron: str | None,
    timezone: str,
    description: str,
) -> dict[str, Any]:
    deployment = {
        "name": name,
        "description": description,
        "entrypoint": entrypoint,
        "parameters": {"params": params},
        "work_pool": copy.deepcopy(like["work_pool"]),
        "schedules": [{"cron": cron, "timezone": timezone}] if cron else [],
        "tags": ["mlops", f"model:{name}"],
    }
    if "concurrency_limit" in like:
        deployment["concurrency_limit"] = copy.deepcopy(like["concurrency_limit"])
    return deployment


def model_deployments(project: dict[str, Any], specs: list[ModelSpec]) -> list[dict[str, Any]]:
    """The deployments of each model in ``specs``, shaped like the shared ones of ``project`` (a prefect.yaml).

    Raises:
        ModelDeploymentError: A model is named like a shared deployment of the same flow.
    """
    train, monitor = _shared(project, TRAIN_ENTRYPOINT), _shared(project, SHARED_MONITOR_ENTRYPOINT)
    taken = {(d.get("entrypoint"), d.get("name")) for d in project.get("deployments") or []}
    wanted: list[dict[str, Any]] = []
    for spec in specs:
        for entrypoint in (TRAIN_ENTRYPOINT, MONITOR_ENTRYPOINT):
            if (entrypoint, spec.name) in taken:
                raise ModelDeploymentError(
                    f"model {spec.name!r} is named like a shared deployment of {entrypoint}: rename the model"
                )
        when = spec.schedules
        trains = f"Ingest, validate and train {spec.name}; register the candidate only if it beats the champion."
        watches = f"Judge the last hour of requests {spec.name}'s champion served: drift, input quality, labels."
        wanted.append(
            _deployment(train, spec.name, TRAIN_ENTRYPOINT, {"model": spec.name}, when.train, when.timezone, trains)
        )
        wanted.append(
            _deployment(
                monitor, spec.name, MONITOR_ENTRYPOINT, {"model_name": spec.name}, when.monitor, when.timezone, watches
            )
        )
    return wanted


def write_deployment_file(
    settings: Settings, base: Path = PROJECT / "prefect.yaml", output: Path | None = None
) -> Path:
    """``base`` plus every model's deployments, as one prefect.yaml; returns where it was written
    (default ``<home>/prefect/deployments.yaml``)."""
    project = yaml.safe_load(base.read_text())
    project["deployments"] = [*project["deployments"], *model_deployments(project, list_specs(settings.specs_dir))]
    path = output or settings.resolved_home / "prefect" / "deployments.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# Written by deployments.model_deployments from {base.name} and the specs in {settings.specs_dir}.\n"
    path.write_text(header + yaml.safe_dump(project, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.model_deployments", description=__doc__)
    parser.add_argument("--base", type=Path, default=PROJECT / "prefect.yaml", help="the shared deployments")
    parser.add_argument("--output", type=Path, default=None, help="default: <home>/prefect/deployments.yaml")
    args = parser.parse_args(argv)
    print(write_deployment_file(get_settings(), args.base, args.output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
