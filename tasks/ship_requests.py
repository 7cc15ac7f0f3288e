"""Ship the finished collection files of a serving host to object storage, where one monitor reads them all.

The servers keep writing to a local folder (nothing heavy on the serving path); a shipper beside them
(``mlops ship-requests``, a sidecar) uploads every *finished* file — ``requests-….jsonl``, never the
``.part`` still being written — to ``<requests_uri>/<model>/`` with the host's name added, checks the
uploaded size, and only then removes the local copy. A failed upload leaves the file where it was for
the next round: nothing is lost, and a file is never half there (object stores write whole objects).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

import fsspec

from serving.collector import SUFFIX, collected_files


@dataclass
class Shipped:
    """What one round shipped: files and bytes, and the files that stayed for the next round, with why."""

    files: int = 0
    bytes: int = 0
    failed: dict[str, str] = field(default_factory=dict)


def shipped_name(local: Path, host: str) -> str:
    """``requests-<start>-<pid>-<n>-<host>.jsonl``: unique across hosts, still ordered by start time."""
    return f"{local.name.removesuffix(SUFFIX)}-{host}{SUFFIX}"


def ship_finished(folder: Path, uri: str, host: str | None = None) -> Shipped:
    """Upload ``folder``'s finished collection files to ``uri`` (an fsspec folder URI), then remove them locally."""
    host = host or socket.gethostname()
    result = Shipped()
    if not folder.is_dir():
        return result
    fs, root = fsspec.core.url_to_fs(uri)
    for path in collected_files(folder):
        target = f"{root.rstrip('/')}/{shipped_name(path, host)}"
        try:
            fs.makedirs(root, exist_ok=True)  # a folder on file systems; nothing to do on object stores
            size = path.stat().st_size
            fs.put_file(str(path), target)
            if fs.size(target) != size:
                raise OSError(f"{target} holds {fs.size(target)} bytes after the upload, not {size}")
        except Exception as error:  # kept for the next round, whatever the store said
            result.failed[path.name] = f"{type(error).__name__}: {error}"
            continue
        path.unlink()
        result.files += 1
        result.bytes += size
    return result
