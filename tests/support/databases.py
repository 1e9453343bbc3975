"""The database each test runs on: a migrated SQLite file, or a fresh PostgreSQL database.

`database` is parametrized over both backends, so a test that takes it (or `store`) runs twice.
Without a PostgreSQL server the postgres half is skipped on a developer machine and fails in CI
(`CI=true`).

Each test process migrates one template per backend, once, and every test gets a copy of it (a
file copy, or `CREATE DATABASE ... TEMPLATE`): running every migration for each of several
hundred tests was a large share of the suite's time. Migrations themselves are tested in
test_migration_race and by the template being made with `upgrade` like any database.
"""

from __future__ import annotations

import asyncio
import os
import shutil
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


def _pg_url(name: str) -> str:
    return str(make_url(PG_URL).set(database=name).render_as_string(hide_password=False))


class _Templates:
    """This test process's migrated templates, made on first use and dropped at the end."""

    def __init__(self, directory: Path) -> None:
        self.sqlite_file = directory / "template.db"
        self.sqlite_ready = False
        self.pg_name = f"delegate_tmpl_{uuid.uuid4().hex[:12]}"
        self.pg_ready = False

    async def sqlite_copy(self, target: Path) -> None:
        if not self.sqlite_ready:
            engine = create_engine(f"sqlite+aiosqlite:///{self.sqlite_file}")
            await upgrade(engine)
            await engine.dispose()  # the last connection's close folds the WAL into the file
            self.sqlite_ready = True
        shutil.copyfile(self.sqlite_file, target)

    async def pg_copy(self, admin: AsyncEngine, name: str) -> None:
        if not self.pg_ready:
            async with admin.connect() as conn:
                await conn.exec_driver_sql(f'CREATE DATABASE "{self.pg_name}"')
            engine = create_engine(_pg_url(self.pg_name))
            await upgrade(engine)
            await engine.dispose()  # a template must have no connections while it is copied
            self.pg_ready = True
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{self.pg_name}"')

    async def drop(self) -> None:
        if self.pg_ready:
            admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
            async with admin.connect() as conn:
                await conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
            await admin.dispose()


@pytest.fixture(scope="session")
def _templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Templates]:
    templates = _Templates(tmp_path_factory.mktemp("templates"))
    yield templates
    asyncio.run(templates.drop())


@pytest.fixture(params=["sqlite", "postgres"])
async def database(
    request: pytest.FixtureRequest, tmp_path: Path, _templates: _Templates
) -> AsyncIterator[Database]:
    """A freshly migrated database on each backend."""
    if request.param == "sqlite":
        await _templates.sqlite_copy(tmp_path / "delegate.db")
        yield Database("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'delegate.db'}")
        return
    await require_postgres()
    name = f"delegate_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        await _templates.pg_copy(admin, name)
        yield Database("postgres", _pg_url(name))
    finally:
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.dispose()


@pytest.fixture
async def store(database: Database) -> AsyncIterator[Store]:
    s = Store(database.engine())
    yield s
    await s.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite+aiosqlite:///{tmp_path / 'delegate.db'}"
