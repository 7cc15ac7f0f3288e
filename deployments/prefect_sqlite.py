"""``prefect`` with write transactions that take SQLite's write lock when they begin.

    python -m deployments.prefect_sqlite server start --host ... --port ...

is ``prefect server start`` (the same CLI, in this process) with one change for a SQLite database:
every transaction the server opens to write begins ``BEGIN IMMEDIATE`` instead of ``BEGIN DEFERRED``.

Why: a deferred transaction that reads first and writes later fails at once with ``database is
locked`` when another connection committed in between (WAL mode; SQLite's busy timeout does not
apply to it). On a busy local server that is what happens to an automation's *run deployment*
action (``create_flow_run_from_deployment`` reads the deployment, then inserts the run) while the
run that triggered it writes its last states: Prefect answers 503 and its client retries after
2 s, then 4 s. An immediate transaction waits for the lock instead (the busy timeout, 60 s) and
goes through as soon as the other commits. Prefect's own comment on its SQLite set-up names the
cure; its migrations use it. Measured in ``bench/loop_hops.py``: each automation hop of the demo
went from 2-3 s (up to 7.8 s) to 0.2-0.4 s.

The cost: every transaction Prefect opens with ``begin_transaction`` holds the write lock from its
start, reads included (the worker's poll for runs, trigger evaluation), so they queue behind writers
instead of failing; a local server's load is small enough for that. PostgreSQL servers are unchanged
(the change is to Prefect's SQLite configuration only). It applies to the server in this process:
``--workers`` above 1 and ``--background`` start others, unchanged. When a Prefect release no longer
has the two names changed here, the server runs unchanged and says so.
"""

from __future__ import annotations

import sys
from typing import Any

PATCHED = "begin_sqlite_stmt"


def immediate_write_transactions() -> bool:
    """Make Prefect's SQLite write transactions ``BEGIN IMMEDIATE``; False when Prefect's SQLite configuration
    no longer looks as expected (then nothing is changed)."""
    from prefect.server.database import configurations

    config = getattr(configurations, "AioSqliteConfiguration", None)
    mode = getattr(configurations, "SQLITE_BEGIN_MODE", None)
    if config is None or mode is None or not callable(getattr(config, PATCHED, None)):
        return False

    def begin_immediate(self: Any, conn: Any) -> None:
        # Prefect sets the mode for a transaction (DEFERRED unless it asked for a lock); reads outside one stay
        # without BEGIN, as before
        if mode.get() is not None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    setattr(config, PATCHED, begin_immediate)
    return True


def main() -> None:
    if not immediate_write_transactions():
        print("prefect_sqlite: this Prefect's SQLite set-up is not the one expected; running it unchanged", flush=True)
    from prefect.cli import app

    sys.argv[0] = "prefect"
    app()


if __name__ == "__main__":
    main()
