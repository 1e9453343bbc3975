"""The database each test runs on: a migrated SQLite file, or a fresh PostgreSQL database.

`database` is parametrized over both backends, so a test that takes it (or `store`) runs twice.
Without a PostgreSQL server the postgres half is skipped on a developer machine and fails in CI
(`CI=true`).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from workers.db import create_engine
from workers.migrate import upgrade
from workers.store import Store

PG_URL = os.environ.get("DELEGATE_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"


async def _postgres_problem() -> str | None:
    """None if PostgreSQL answers, else why not."""
    engine = create_engine(PG_URL)
    try:
        async with asyncio.timeout(5), engine.connect():
            pass
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        await engine.dispose()
    return None


_pg_problem: str | bool | None = False  # False: not probed yet


async def require_postgres() -> None:
    """Skip without a server on a developer machine; fail in CI, where one must exist."""
    global _pg_problem
    if _pg_problem is False:
        _pg_problem = await _postgres_problem()
    if _pg_problem:
        message = f"PostgreSQL at {PG_URL} is not reachable ({_pg_problem})"
        if IN_CI:
            pytest.fail(message + "; CI=true requires it", pytrace=False)
        pytest.skip(message)


class Database:
    """A migrated, isolated database for one test: a SQLite file or a PostgreSQL database."""

    def __init__(self, backend: str, url: str) -> None:
        self.backend = backend
        self.url = url

    def engine(self) -> AsyncEngine:
        return create_engine(self.url)

    def env(self) -> dict[str, str]:
        """Environment for a child process using this database."""
        return {"DATABASE_URL": self.url}


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A freshly migrated database on each backend."""
    if request.param == "sqlite":
        db = Database("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'delegate.db'}")
    else:
        await require_postgres()
        name = f"delegate_t_{uuid.uuid4().hex[:12]}"
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        db = Database(
            "postgres",
            str(make_url(PG_URL).set(database=name).render_as_string(hide_password=False)),
        )
    engine = db.engine()
    await upgrade(engine)
    await engine.dispose()
    try:
        yield db
    finally:
        if db.backend == "postgres":
            async with admin.connect() as conn:
                await conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
            await admin.dispose()


@pytest.fixture
async def store(database: Database) -> AsyncIterator[Store]:
    s = Store(database.engine())
    yield s
    await s.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite+aiosqlite:///{tmp_path / 'delegate.db'}"
