"""The local Prefect server's SQLite write transactions take the write lock when they begin (Prefect's own
configuration class on a real SQLite file), so a read-then-write transaction waits instead of failing."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from prefect.server.database.configurations import AioSqliteConfiguration

from deployments.prefect_sqlite import immediate_write_transactions


def other_writer_can_begin(database: Path) -> bool:
    """Whether a second connection gets the write lock at once while Prefect's transaction is open."""
    other = sqlite3.connect(database, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as error:
        assert "locked" in str(error)
        return False
    finally:
        other.close()


async def lock_held_after_begin(database: Path) -> bool:
    config = AioSqliteConfiguration(connection_url=f"sqlite+aiosqlite:///{database}")
    engine = await config.engine()
    try:
        async with engine.connect() as connection:
            await connection.execute(sa.text("CREATE TABLE IF NOT EXISTS runs (id INTEGER)"))
            await connection.commit()
        session = await config.session(engine)
        async with session, config.begin_transaction(session):
            await session.execute(sa.text("SELECT count(*) FROM runs"))  # a read first, as Prefect's inserts do
            return not await asyncio.to_thread(other_writer_can_begin, database)
    finally:
        await engine.dispose()


def test_prefects_write_transactions_begin_immediate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # restored after the test, whatever the function under test sets
    monkeypatch.setattr(AioSqliteConfiguration, "begin_sqlite_stmt", AioSqliteConfiguration.begin_sqlite_stmt)
    assert asyncio.run(lock_held_after_begin(tmp_path / "deferred.db")) is False  # Prefect's default: DEFERRED
    assert immediate_write_transactions() is True
    assert asyncio.run(lock_held_after_begin(tmp_path / "immediate.db")) is True
