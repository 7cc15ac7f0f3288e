"""One training run per model at a time: a lock beside the model's data, taken before any batch is claimed.

Two runs on the same landed batches used to race: the loser failed with a raw ``[Errno 2] No such
file`` (the winner had moved the batch) and both could share one training key. The lock is an
``flock`` on ``<data>/.train.lock`` (a local data location): the second run fails at once, saying
which run holds it. The kernel releases it when the holder's process ends, however it ends, so a
crashed run never leaves the model locked. A data location on object storage has no such lock;
there, run one training deployment per model (Prefect's concurrency limit on the work queue).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec

LOCK_NAME = ".train.lock"


class TrainingBusyError(RuntimeError):
    """Another training run of the model holds its batches."""


@contextmanager
def training_lock(data_uri: str, model: str, holder: str) -> Iterator[bool]:
    """Hold the model's training lock for the block (``holder``: who, for the message another run gets); yields
    whether the lock is exclusive (False on object storage, where there is none).

    Raises:
        TrainingBusyError: Another run holds it.
    """
    fs, root = fsspec.core.url_to_fs(data_uri)
    if "file" not in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        yield False  # object storage: see the module doc
        return
    folder = Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainingBusyError(
                f"another training run of {model} holds its batches ({_holder(descriptor)}); "
                "nothing was ingested or trained: run again when it has finished"
            ) from None
        record = {"holder": holder, "pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(record).encode(), 0)
        yield True
    finally:
        os.close(descriptor)  # releases the lock


def _holder(descriptor: int) -> str:
    try:
        record = json.loads(os.pread(descriptor, 4096, 0) or b"{}")
        since = time.strftime("%H:%M:%S UTC", time.gmtime(float(record["since"])))
        return f"{record['holder']}, pid {record['pid']} on {record['host']} since {since}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
