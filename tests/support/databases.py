"""The database each test runs on: a migrated SQLite file, or a fresh PostgreSQL database.

`database` is parametrized over both backends, so a test that takes it (or `store`) runs twice.
Without a PostgreSQL server the postgres half is skipped on a developer machine and fails in CI
(`CI=true`).

A module (or test) whose subject is the front door (Slack's surfaces, rendering, HTTP
hostility, authorisation of clicks) rather than what the database does is marked
`front_door`: it runs once, on SQLite. The engine and storage modules it calls (orders, queue,
leases, ledger, audit, outbox, approvals) are tested on both backends in their own modules, and
the whole pipeline still runs on PostgreSQL in the review-gate, delivery, worker and chaos
tests. Running every Slack rendering test twice cost the suite about a minute of CPU and found
nothing a storage test would not.

Each test process migrates one template per backend, once, and every test gets a copy of it (a
file copy, or `CREATE DATABASE ... TEMPLATE`): running every migration for each of several
hundred tests was a large share of the suite's time. Migrations themselves are tested in
test_migration_race and by the template being made with `upgrade` like any database.

PostgreSQL copies are made ahead and dropped behind on a thread of their own (`_PgCopies`): a
`CREATE DATABASE` and a `DROP DATABASE` (which forces a checkpoint) cost a test about 0.5 s of
setup and 1 s of teardown on a busy machine, more than most tests themselves. Copies commit
without waiting for the WAL flush (`synchronous_commit=off`): that changes only what a crash of
the server would keep, which no test is about.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

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


T = TypeVar("T")


class _PgCopies:
    """Copies of a migrated template, `AHEAD` of them kept ready and the used ones dropped in
    the background, by an event loop on a thread of their own (a test's loop ends with it)."""

    AHEAD = 2

    def __init__(self, template: str) -> None:
        self.template = template
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pg-copies", daemon=True)
        self._thread.start()
        self._drops: list[Future[None]] = []
        self._started: Future[None] = self._run(self._start())

    def _run(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def _start(self) -> None:
        self._admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        self._ready: asyncio.Queue[str] = asyncio.Queue(maxsize=self.AHEAD)
        self._maker = asyncio.create_task(self._make())

    async def _make(self) -> None:
        while True:
            name = f"delegate_t_{uuid.uuid4().hex[:12]}"
            async with self._admin.connect() as conn:
                await conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
                await conn.exec_driver_sql(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
            await self._ready.put(name)

    async def _take(self) -> str:
        get = asyncio.ensure_future(self._ready.get())
        # A maker that failed (the server went away) fails the test instead of hanging it.
        await asyncio.wait([get, self._maker], return_when=asyncio.FIRST_COMPLETED)
        if not get.done():
            get.cancel()
            self._maker.result()
            raise RuntimeError("the PostgreSQL copy maker stopped")
        return get.result()

    async def take(self) -> str:
        """A fresh copy's name, waiting for one to be made if none is ready."""
        await asyncio.wrap_future(self._started)
        return await asyncio.wrap_future(self._run(self._take()))

    def give_back(self, name: str) -> None:
        """Drop the copy, later: its test does not wait for it."""
        self._drops.append(self._run(self._drop(name)))

    async def _drop(self, name: str) -> None:
        async with self._admin.connect() as conn:
            await conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def _close(self) -> None:
        self._maker.cancel()
        with contextlib.suppress(BaseException):
            await self._maker
        while not self._ready.empty():
            await self._drop(self._ready.get_nowait())
        await self._admin.dispose()

    def close(self) -> None:
        """Wait for every drop, drop the copies not used, and stop the thread."""
        for drop in self._drops:
            with contextlib.suppress(Exception):
                drop.result()
        self._started.result()
        self._run(self._close()).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()


class _Templates:
    """This test process's migrated templates, made on first use and dropped at the end."""

    def __init__(self, directory: Path) -> None:
        self.sqlite_file = directory / "template.db"
        self.sqlite_ready = False
        self.pg_name = f"delegate_tmpl_{uuid.uuid4().hex[:12]}"
        self.pg_ready = False
        self.pg_copies: _PgCopies | None = None

    async def sqlite_copy(self, target: Path) -> None:
        if not self.sqlite_ready:
            engine = create_engine(f"sqlite+aiosqlite:///{self.sqlite_file}")
            await upgrade(engine)
            await engine.dispose()  # the last connection's close folds the WAL into the file
            self.sqlite_ready = True
        shutil.copyfile(self.sqlite_file, target)

    async def pg_copy(self) -> str:
        """The name of a fresh copy of the migrated template (`pg_done` drops it)."""
        if not self.pg_ready:
            admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
            async with admin.connect() as conn:
                await conn.exec_driver_sql(f'CREATE DATABASE "{self.pg_name}"')
            await admin.dispose()
            engine = create_engine(_pg_url(self.pg_name))
            await upgrade(engine)
            await engine.dispose()  # a template must have no connections while it is copied
            self.pg_ready = True
            self.pg_copies = _PgCopies(self.pg_name)
        assert self.pg_copies is not None
        return await self.pg_copies.take()

    def pg_done(self, name: str) -> None:
        assert self.pg_copies is not None
        self.pg_copies.give_back(name)

    async def drop(self) -> None:
        if self.pg_copies is not None:
            await asyncio.to_thread(self.pg_copies.close)
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


FRONT_DOOR = "front_door"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{FRONT_DOOR}: the test is about the front door, not storage: SQLite only"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # As a mark, so that pytest gives the test this parametrization instead of the fixture's.
    if "database" in metafunc.fixturenames and metafunc.definition.get_closest_marker(FRONT_DOOR):
        metafunc.definition.add_marker(pytest.mark.parametrize("database", ["sqlite"], indirect=True))


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
    name = await _templates.pg_copy()
    try:
        yield Database("postgres", _pg_url(name))
    finally:
        _templates.pg_done(name)


@pytest.fixture
async def store(database: Database) -> AsyncIterator[Store]:
    s = Store(database.engine())
    yield s
    await s.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite+aiosqlite:///{tmp_path / 'delegate.db'}"
