"""Apply the Alembic migrations that ship inside the package."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from workers.db import (
    DATABASE_ERRORS,
    missing_sqlite_directory,
    permanent_problem,
    redact_error,
    redact_url,
)
from workers.errors import DatabaseUnavailable

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

# Any fixed number works: every Delegate process takes the same lock before migrating.
_MIGRATION_LOCK = 0x44454C45  # "DELE"


# Alembic is imported where it migrates or reads the scripts: the read-only commands (show,
# audit, doctor) only look at the applied revision, and start a quarter of a second sooner.


def alembic_config(url: str = "") -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("workers").joinpath("migrations")))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the database up to `revision`; safe to run on every start."""
    from alembic import command

    cfg = alembic_config()

    def _upgrade(connection: Connection) -> None:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)

    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Processes started together on a fresh database would each create the tables and
            # all but one crash on a unique violation; the lock makes the others wait, then find
            # the schema current. SQLite's BEGIN IMMEDIATE already serialises them.
            await conn.execute(text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))
        await conn.run_sync(_upgrade)


async def upgrade_when_reachable(
    engine: AsyncEngine,
    *,
    wait_s: float,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Migrate, waiting up to `wait_s` for a database that is still starting (as in a compose
    file where the bot and the database start together); then a clear DatabaseUnavailable. What
    waiting cannot fix (no such database or directory, a refused login) raises it at once."""
    url = engine.url.render_as_string(hide_password=False)
    directory = missing_sqlite_directory(url)
    if directory is not None:
        raise DatabaseUnavailable(
            f"the directory {directory} for the SQLite database does not exist; "
            "create it, or point DATABASE_URL at a file in an existing directory"
        )
    deadline = time.monotonic() + wait_s
    delay = 0.5
    while True:
        try:
            await upgrade(engine)
            return
        except DATABASE_ERRORS as exc:
            if problem := permanent_problem(exc, url):
                raise DatabaseUnavailable(problem) from None
            if time.monotonic() + delay > deadline:
                raise DatabaseUnavailable(
                    f"cannot reach the database at {redact_url(url)} after {wait_s:g} s "
                    f"({redact_error(exc, url)}); check DATABASE_URL and that the server is running"
                ) from None
            log.warning(
                "database not reachable yet, retrying in %.1f s (%s)",
                delay,
                redact_error(exc, url),
            )
            await sleep(delay)
            delay = min(delay * 2, 5.0)


async def schema_present(engine: AsyncEngine) -> bool:
    """Whether this database holds Delegate's tables; never creates a SQLite file to find out."""
    database = make_url(engine.url).database
    if engine.dialect.name == "sqlite" and database not in (None, "", ":memory:"):
        if not Path(database or "").exists():  # noqa: ASYNC240 (one stat call)
            return False
    return await current_revision(engine) is not None


async def current_revision(engine: AsyncEngine) -> str | None:
    """The applied revision, as Alembic records it (None: no Delegate schema here)."""

    def _current(connection: Connection) -> str | None:
        if not inspect(connection).has_table("alembic_version"):
            return None
        versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars()
        return next(iter(versions), None)

    async with engine.connect() as conn:
        return await conn.run_sync(_current)


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()
