"""Database engines and sessions: SQLite (WAL) embedded, PostgreSQL for several processes."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

SQLITE_BUSY_TIMEOUT_MS = 10_000

READ_ONLY = "delegate_read_only"
"""Execution option of engines whose transactions only read (see `reading`)."""

DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    SQLAlchemyError,
    asyncpg.PostgresError,
    ConnectionError,
    socket.gaierror,
    sqlite3.Error,
)
"""What a database that is down, unreachable or refusing us raises, by whichever layer."""


def redact_url(url: str) -> str:
    """The URL with its password replaced, fit for logs and error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # unparsable: show nothing of it rather than risk the password
        return "<an unparsable database URL>"


def root_cause(exc: BaseException) -> BaseException:
    """The driver's own error under SQLAlchemy's wrappers."""
    cause: BaseException = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's
    while cause.__cause__ is not None:  # ...and its asyncpg adapter wraps asyncpg's
        cause = cause.__cause__
    return cause


def permanent_problem(exc: BaseException, url: str) -> str | None:
    """What is wrong, if no amount of waiting fixes it: the database does not exist, or the
    server refuses the user or password. None for a server that is down or still starting."""
    cause = root_cause(exc)
    where = redact_url(url)
    if isinstance(cause, asyncpg.InvalidCatalogNameError):
        name = make_url(url).database
        return (
            f"the database {name!r} does not exist at {where}; "
            f"create it (e.g. `createdb {name}`) or fix the database name in DATABASE_URL"
        )
    if isinstance(cause, asyncpg.InvalidAuthorizationSpecificationError):
        return (
            f"the server at {where} refuses the login ({redact_error(exc, url)}); "
            "fix the user or password in DATABASE_URL"
        )
    return None


def missing_sqlite_directory(url: str) -> Path | None:
    """The directory a SQLite file would go in, if it does not exist: SQLite creates the file
    but not the directory, and no waiting makes one appear."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    directory = Path(parsed.database or "").parent
    return None if directory.exists() else directory


def redact_error(exc: BaseException, url: str) -> str:
    """`type: message` of a database error, with the URL's password removed wherever it shows."""
    cause = root_cause(exc)
    detail = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    message = f"{type(cause).__name__}: {detail}" if detail else type(cause).__name__
    try:
        password = make_url(url).password
    except Exception:
        password = None
    if password:
        message = message.replace(str(password), "***")
    return message


def is_connection_error(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says the database connection failed rather than the
    statement: dropped, reset, refused, invalidated, or (SQLite) busy. A new connection may
    well succeed, so a run that hits one is retried rather than failed."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DisconnectionError | OperationalError | InterfaceError):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, asyncpg.PostgresConnectionError | asyncpg.InterfaceError):
            return True
        current = current.__cause__ or current.__context__
    return False


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine with the settings each backend needs to be safe under concurrency."""
    if is_sqlite(url):
        engine = create_async_engine(
            url,
            connect_args={
                "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                "factory": _RollbackBeforeClose,
            },
            **kwargs,
        )
        _configure_sqlite(engine)
        return engine
    engine = create_async_engine(url, **kwargs)
    _ping_when_idle(engine)
    return engine


PING_AFTER_IDLE_S = 1.0
"""A pooled PostgreSQL connection idle longer than this is pinged before use (a restarted or
failed-over server); one handed straight back out is not: SQLAlchemy's pool_pre_ping costs three
round trips (BEGIN, ping, ROLLBACK) on every checkout, as many as a whole reservation."""


def _ping_when_idle(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("checked_in", 0.0) < PING_AFTER_IDLE_S:
            return
        try:
            dbapi_connection.ping()
        except Exception as exc:  # the pool drops the connection and takes another
            raise DisconnectionError(str(exc)) from exc


class _RollbackBeforeClose(sqlite3.Connection):
    """A SQLite connection that ends its transaction before it closes.

    A task cancelled in the middle of a statement (a worker shutting down mid-claim, an order
    cancelled mid-step) has its connection closed by SQLAlchemy while that statement is
    unfinished and still held by a cursor in the task's traceback. SQLite then keeps the
    connection's transaction, and with it the database's write lock, until the cursor is
    garbage-collected; every writer in every process waits on it meanwhile."""

    def close(self) -> None:
        if self.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.rollback()
        super().close()


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front, so two writers wait on busy_timeout
        # instead of deadlocking when both try to upgrade a read lock. A read-only transaction
        # (`reading`) takes no lock: in WAL mode it reads its snapshot beside the writer.
        if conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def reading(engine: AsyncEngine) -> AsyncEngine:
    """The same engine (and pool) for transactions that only read: on SQLite they begin with a
    plain BEGIN, so a read never waits for, or fails behind, a writer."""
    return engine.execution_options(**{READ_ONLY: True})


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
