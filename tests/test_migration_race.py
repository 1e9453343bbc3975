"""Migrations race at start (Reliability issue, item 5): four `delegate worker` processes started
together on a fresh PostgreSQL database all start; one migrates under the advisory lock, the
others wait for it and find the schema current. None crashes on a unique violation."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.openai import FakeOpenAI
from tests.support.databases import PG_URL, Database, require_postgres
from tests.support.processes import spawn_worker, stop_worker, worker_env
from tests.support.waiting import eventually
from workers.db import create_engine
from workers.migrate import current_revision, head_revision

PROCESSES = 4


@pytest.fixture
async def fresh_postgres() -> AsyncIterator[Database]:
    """An empty PostgreSQL database: no tables, no migrations applied."""
    await require_postgres()
    name = f"delegate_fresh_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield Database("postgres", url)
    finally:
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.dispose()


async def test_four_workers_started_together_on_a_fresh_database_all_start(
    fresh_postgres: Database,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
) -> None:
    env = worker_env(fresh_postgres, fake_anthropic, fake_openai, tmp_path)
    workers = await asyncio.gather(
        *(spawn_worker(env, tmp_path, worker_id=f"w{n}") for n in range(PROCESSES))
    )
    logs = [tmp_path / f"w{n}.log" for n in range(PROCESSES)]
    try:
        # Each process logs this once it is past its migrations and working.
        await eventually(
            lambda: all("started with concurrency" in log.read_text() for log in logs)
            or any(w.returncode is not None for w in workers),
            timeout_s=60,
        )
        crashed = {
            f"w{n}": (w.returncode, logs[n].read_text()[-2000:])
            for n, w in enumerate(workers)
            if w.returncode is not None
        }
        assert crashed == {}
    finally:
        codes = [await stop_worker(w, timeout_s=30) for w in workers]
    assert codes == [0] * PROCESSES, [log.read_text()[-2000:] for log in logs]
    for log in logs:
        assert "UniqueViolation" not in log.read_text() and "Traceback" not in log.read_text()
    engine = fresh_postgres.engine()
    try:
        assert await current_revision(engine) == head_revision()
    finally:
        await engine.dispose()
