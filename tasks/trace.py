"""From one prediction back to its origin: ``mlops trace <request-id>``.

A served request is looked up in the collection files of every model (``<home>/requests/<model>/``,
finished and still being written), a batch-scored row (request id ``<input stem>:<row>``) in the
batch output folders (``<home>/batch/output/*/`` and any folder given). What was found — the model
and version that answered, the deployment, the time, the inputs and outputs as collected — is joined
with what the registry knows of that version: the training run, git commit, dataset digest,
validation summary, ONNX sha256 and the release image with its digest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from serving.collector import PARTIAL, SUFFIX
from tasks.tracking import client

MANIFEST = "_manifest.json"
LINEAGE_TAGS = (
    "run_id",
    "git_commit",
    "dataset_digest",
    "dataset_uri",
    "validation_status",
    "validation_summary",
    "prefect_flow_run_id",
    "onnx_sha256",
    "image_ref",
    "image_digest",
    "model_family",
    "promoted_by",
    "promotion_reason",
)


class TraceNotFound(LookupError):
    """The id is in none of the places searched; the message lists them."""


@dataclass(frozen=True)
class Trace:
    """One request (all its rows) or one batch row, and the lineage of the version that answered it."""

    request_id: str
    source: str  # "served" or "batch"
    model: str
    version: str
    time: str
    where: str  # the collection file or batch part it was read from
    rows: list[dict[str, Any]]
    deployment: str | None = None
    lineage: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, default=str)


def _collection_files(requests_root: Path, model: str | None) -> list[Path]:
    folders = [requests_root / model] if model else sorted(p for p in requests_root.glob("*") if p.is_dir())
    return sorted(path for folder in folders for path in folder.glob(f"requests-*{SUFFIX}*") if _collected(path))


def _collected(path: Path) -> bool:
    return path.name.endswith(SUFFIX) or path.name.endswith(SUFFIX + PARTIAL)


def find_served(request_id: str, files: Iterable[Path]) -> Trace | None:
    """The request's rows from the collection files: row ids (the spec's id columns the request carried), inputs by
    feature, the answer (and probabilities)."""
    needle = orjson.dumps(request_id)
    for path in files:
        data = path.read_bytes()
        if needle not in data:  # a byte search first: most files do not hold it
            continue
        lines = data.split(b"\n")
        header = orjson.loads(lines[0])["header"]
        for line in lines[1:]:
            if needle not in line:
                continue
            try:
                call = orjson.loads(line)
            except orjson.JSONDecodeError:  # the half-written last line of a file being written
                continue
            if request_id in call["request_ids"]:
                return _served_trace(request_id, header, call, path)
    return None


def _served_trace(request_id: str, header: dict[str, Any], call: dict[str, Any], path: Path) -> Trace:
    start = 0
    for other, count in zip(call["request_ids"], call["rows"], strict=True):
        if other == request_id:
            break
        start += count
    rows = []
    classes = header.get("classes")
    sent = call.get("ids") or {}
    for offset in range(count):
        index = start + offset
        row: dict[str, Any] = {"row": offset}
        row |= {name: (sent.get(name) or [None] * (index + 1))[index] for name in header.get("ids") or []}
        row |= dict(zip(header["features"], call["inputs"][index], strict=True))
        row["prediction"] = call["predictions"][index]
        if "probabilities" in call:
            chances = call["probabilities"][index]
            row["probabilities"] = dict(zip(classes, chances, strict=True)) if classes else chances
        rows.append(row)
    version = str(header["model_version"])
    return Trace(
        request_id,
        "served",
        header["model"],
        version,
        datetime.fromtimestamp(call["time"], UTC).isoformat(),
        str(path),
        rows,
        deployment=f"{header['model']}-v{version}",
    )


def _batch_outputs(roots: Iterable[Path]) -> Iterator[Path]:
    for root in roots:
        if (root / MANIFEST).is_file():
            yield root
        elif root.is_dir():
            yield from sorted(p.parent for p in root.glob(f"*/{MANIFEST}"))


def find_batch_row(request_id: str, outputs: Iterable[Path]) -> Trace | None:
    """A batch-scored row (``<input stem>:<row>``) from the output folders' parts, with the run's manifest."""
    import pyarrow.parquet as pq

    stem = request_id.rpartition(":")[0]
    if not stem:
        return None
    for output in outputs:
        for part in sorted((output / stem).glob("part-*.parquet")):
            table = pq.read_table(part, filters=[("request_id", "=", request_id)])
            if table.num_rows:
                manifest = json.loads((output / MANIFEST).read_text())
                row = {key: values[0] for key, values in table.to_pydict().items()}
                stamp = datetime.fromtimestamp(part.stat().st_mtime, UTC).isoformat()
                return Trace(request_id, "batch", manifest["model"], str(manifest["version"]), stamp, str(part), [row])
    return None


def version_lineage(tracking_uri: str, model: str, version: str) -> dict[str, Any]:
    """What the registry records of the version: lineage tags, aliases, the training run's start and metrics."""
    tracker = client(tracking_uri)
    found = tracker.get_model_version(model, version)
    tags = found.tags or {}
    aliases = [alias for alias, number in tracker.get_registered_model(model).aliases.items() if number == version]
    lineage: dict[str, Any] = {key: tags.get(key) for key in LINEAGE_TAGS if tags.get(key)}
    lineage["run_id"] = found.run_id or lineage.get("run_id")
    lineage["aliases_now"] = aliases
    lineage["registered"] = datetime.fromtimestamp(found.creation_timestamp / 1000, UTC).isoformat()
    if found.run_id:
        run = tracker.get_run(found.run_id)
        lineage["training_started"] = datetime.fromtimestamp(run.info.start_time / 1000, UTC).isoformat()
        lineage["holdout_metrics"] = dict(run.data.metrics)
    return lineage


def trace(
    request_id: str,
    home: Path,
    tracking_uri: str,
    model: str | None = None,
    batch_dirs: Iterable[Path] = (),
) -> Trace:
    """Find ``request_id`` among served requests, then batch rows, and add the version's lineage.

    Raises:
        TraceNotFound: It is in none of them (the message says where it looked).
    """
    files = _collection_files(home / "requests", model)
    roots = [home / "batch" / "output", *batch_dirs]
    outputs = list(_batch_outputs(roots))
    found = find_served(request_id, files) or find_batch_row(request_id, outputs)
    if found is None:
        raise TraceNotFound(
            f"request id {request_id!r} not found: searched {len(files)} collection file(s) under "
            f"{home / 'requests'}{f'/{model}' if model else ''} and {len(outputs)} batch output(s) under "
            f"{', '.join(str(root) for root in roots)}; pass --batch-dir for scores written elsewhere"
        )
    return Trace(**{**found.__dict__, "lineage": version_lineage(tracking_uri, found.model, found.version)})
