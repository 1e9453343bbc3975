"""What every part of the store shares: the engine and its transactions, reading an order row
(locked for update when asked), the one checked state change (`_move`) and the audit append
every change goes through in its own transaction.

The two databases lock differently, and only `_for_update` and `_serialise` know it: PostgreSQL
locks rows (FOR UPDATE, SKIP LOCKED) and takes advisory locks, while SQLite's BEGIN IMMEDIATE
(workers.db) already gives each writing transaction the whole database.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Select, bindparam, event, func, insert, text, update
from sqlalchemy import select as sa_select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.selectable import GenerativeSelect
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from workers.audit import (
    ALL_CHAINS,
    GENESIS_HASH,
    LEGACY_TOTAL,
    SCHEME_HMAC,
    TOTAL_COUNTS_CHAINS,
    AuditKey,
    ChainRecord,
    event_hash,
    head_mac,
)
from workers.db import is_sqlite, reading, session_factory
from workers.errors import NotFound, StaleUpdate
from workers.models import AuditEvent, AuditHead, WorkOrderRow, utcnow
from workers.states import NOT_STARTED, check_transition
from workers.store.transitions import record_transition
from workers.workorder import (
    Budget,
    Status,
    Verification,
    WorkOrder,
    format_order_id,
    parse_order_id,
)

OrderRef = str | int
_Query = TypeVar("_Query", bound=GenerativeSelect)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def order_number(ref: OrderRef) -> int:
    return ref if isinstance(ref, int) else parse_order_id(ref)


def row_to_order(row: WorkOrderRow) -> WorkOrder:
    assert row.id is not None
    return WorkOrder(
        id=format_order_id(row.id),
        title=row.title,
        requester=row.requester,
        team=row.team,
        channel=row.channel,
        thread_ts=row.thread_ts,
        goal=row.goal,
        context=row.context,
        deliverable=row.deliverable,
        acceptance_criteria=list(row.acceptance_criteria),
        budget=Budget.model_validate(row.budget),
        workload_class=row.workload_class,
        authority_policy=row.authority_policy,
        verification=Verification.model_validate(row.verification),
        escalation_contact=row.escalation_contact,
        deadline=as_utc(row.deadline),
        status=Status(row.status),
        self_approved=bool(row.self_approved),
    )


log = logging.getLogger(__name__)

# Session.info key: what to call once the session's transaction has committed.
_AFTER_COMMIT = "delegate_after_commit"
# Session.info key: the transaction wrote outbox rows (`StoreBase.on_outbox`).
OUTBOX_WRITTEN = "delegate_outbox_written"
# Session.info key: the database's clock as this transaction last read it (workers.store.leases
# `database_now`, or beside a locked order row), so that the due times it writes are the
# database's without a statement of their own (`transaction_now`).
DATABASE_NOW = "delegate_database_now"

# The database's current time, as a column: text on SQLite, a timestamp on PostgreSQL.
SQLITE_NOW = func.strftime("%Y-%m-%d %H:%M:%f", "now")
POSTGRES_NOW = func.statement_timestamp()


def database_time(value: Any) -> datetime:
    """A time read from SQLITE_NOW or POSTGRES_NOW, as an aware UTC datetime."""
    if isinstance(value, str):  # SQLite
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@event.listens_for(AsyncSession.sync_session_class, "after_commit")
def _after_commit(session: Any) -> None:
    for callback in session.info.pop(_AFTER_COMMIT, ()):
        try:
            callback()
        except Exception:  # the commit stands: a listener's failure must not look like its own
            log.exception("after-commit listener failed")


@event.listens_for(AsyncSession.sync_session_class, "after_transaction_end")
def _forget_clock(session: Any, transaction: Any) -> None:
    if transaction.parent is None:  # the clock read belongs to the transaction, not the session
        session.info.pop(DATABASE_NOW, None)


@event.listens_for(AsyncSession.sync_session_class, "after_soft_rollback")
def _after_rollback(session: Any, previous_transaction: Any) -> None:
    session.info.pop(_AFTER_COMMIT, None)


class HeadsSeen:
    """The head (count, last hash) this process last wrote on each recent chain, to append the
    next event without reading the head first: the append moves the head only if it is still
    that one, and reads it if not (another process appended, or that transaction rolled back).
    A wrong guess costs a round trip, never a wrong chain."""

    LIMIT = 4096

    def __init__(self) -> None:
        self._heads: OrderedDict[str, tuple[int, str]] = OrderedDict()

    def get(self, chain: str) -> tuple[int, str] | None:
        return self._heads.get(chain)

    def wrote(self, chain: str, count: int, last_hash: str) -> None:
        self._heads[chain] = (count, last_hash)
        self._heads.move_to_end(chain)
        if len(self._heads) > self.LIMIT:
            self._heads.popitem(last=False)


class Database:
    """What the repositories of one store share: the engine and its sessions, the audit key,
    and whom to tell after a commit. One per process and database (`Store` makes it)."""

    def __init__(self, engine: AsyncEngine, *, audit_key: AuditKey | None = None) -> None:
        self.engine = engine
        self.sessions = session_factory(reading(engine))  # reads: no write lock on SQLite
        self.writing = session_factory(engine)
        self.sqlite = is_sqlite(str(engine.url))
        self.audit_key = audit_key or AuditKey.unkeyed()
        self.total_current = False  # the audit total counts chains (see _upgrade_total)
        self.heads_seen = HeadsSeen()
        self.queued_listeners: list[Callable[[], None]] = []
        self.outbox_listeners: list[Callable[[], None]] = []

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        async with self.writing() as session:
            async with session.begin():
                yield session
            if session.info.pop(OUTBOX_WRITTEN, False):
                for listener in list(self.outbox_listeners):
                    try:
                        listener()
                    except Exception:  # the commit stands
                        log.exception("outbox listener failed")


class StoreBase:
    """One repository's share of the database: transactions, locked reads, state changes and
    audit appends, over the `Database` every repository of a store shares."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.engine = db.engine
        self._sessions = db.sessions
        self._writing = db.writing
        self._sqlite = db.sqlite
        self.audit_key = db.audit_key

    @property
    def _total_current(self) -> bool:
        return self._db.total_current

    @_total_current.setter
    def _total_current(self, value: bool) -> None:
        self._db.total_current = value

    @property
    def _queued_listeners(self) -> list[Callable[[], None]]:
        return self._db.queued_listeners

    def transaction(self) -> AbstractAsyncContextManager[AsyncSession]:
        return self._db.transaction()

    async def _row(
        self, s: AsyncSession, ref: OrderRef, *, for_update: bool = False
    ) -> WorkOrderRow:
        """The order's row; `for_update` locks it for the rest of the transaction and reads the
        database's clock beside it (in the same statement), for the due times the transaction
        writes (`transaction_now`)."""
        number = order_number(ref)
        if not for_update:
            row = (await s.exec(select(WorkOrderRow).where(WorkOrderRow.id == number))).first()
        else:
            clock = SQLITE_NOW if self._sqlite else POSTGRES_NOW
            query = self._for_update(select(WorkOrderRow, clock).where(WorkOrderRow.id == number))
            found = (await s.exec(query)).first()
            row = None
            if found is not None:
                row, s.info[DATABASE_NOW] = found[0], database_time(found[1])
        if row is None:
            raise NotFound(f"{format_order_id(number)} does not exist")
        return row

    def _for_update(self, query: _Query, *, skip_locked: bool = False) -> _Query:
        """Lock the rows `query` selects until the transaction ends (PostgreSQL); `skip_locked`
        passes over rows another transaction holds. SQLite needs nothing: BEGIN IMMEDIATE holds
        the write lock already."""
        if self._sqlite:
            return query
        return query.with_for_update(skip_locked=skip_locked)

    async def _serialise(self, s: AsyncSession, key: str) -> None:
        """Make transactions that pass the same key take turns until they commit (a PostgreSQL
        advisory lock); SQLite's BEGIN IMMEDIATE already serialises writers."""
        if not self._sqlite:
            await s.exec(text("SELECT pg_advisory_xact_lock(hashtext(:key))").bindparams(key=key))  # type: ignore[call-overload]

    async def _move(
        self,
        s: AsyncSession,
        row: WorkOrderRow,
        target: Status,
        *,
        actor: str,
        reason: str,
        expected: Collection[Status] | None = None,
        audit: dict[str, Any] | None = None,
        step: str | None = None,
        by: str | None = None,
        **changes: Any,
    ) -> None:
        """Change a locked row's state inside an open transaction: checked against the table
        (and `expected`), compare-and-set on the version, audited, copied to `transitions`, and
        shown on the order's status message (`step`, else the state's own words; `by`, the
        person who made the change) through the outbox, in the same transaction."""
        assert row.id is not None
        order_id = format_order_id(row.id)
        source = Status(row.status)
        check_transition(order_id, source, target, actor=actor, reason=reason, expected=expected)
        before = {"wait_kind": row.wait_kind, "waiting_since": row.waiting_since}
        result = await s.exec(
            update(WorkOrderRow)
            .where(col(WorkOrderRow.id) == row.id, col(WorkOrderRow.version) == row.version)
            .values(status=target.value, version=row.version + 1, updated_at=utcnow(), **changes)
        )
        if result.rowcount != 1:
            raise StaleUpdate(order_id)
        if target is Status.QUEUED and self._queued_listeners:
            s.info.setdefault(_AFTER_COMMIT, []).extend(self._queued_listeners)
        data = {"from": source.value, "to": target.value, "reason": reason, **(audit or {})}
        event = await self._append_audit(s, order_id, actor=actor, kind="transition", data=data)
        # The metrics' narrow copy of the change, in the same transaction (workers.store.transitions).
        await record_transition(
            s,
            row,
            source,
            target,
            seq=event.seq,
            at=event.at,
            actor=actor,
            audit=data,
            before=before,
        )
        await s.refresh(row)
        if source not in NOT_STARTED or target is Status.QUEUED:
            from workers.store.outbox import state_status

            await state_status(s, row, actor=actor, reason=reason, step=step, by=by)

    async def _append_audit(
        self,
        s: AsyncSession,
        chain: str,
        *,
        actor: str,
        kind: str,
        data: dict[str, Any],
        also: Sequence[Also] = (),
    ) -> ChainRecord:
        """Append one event to `chain` and move its anchored head (see `_append_on`)."""
        await s.flush()  # what the session holds goes first, as it did when this was ORM
        return await self._append_on(
            await s.connection(), chain, actor=actor, kind=kind, data=data, also=also
        )

    async def _append_on(
        self,
        conn: AsyncConnection,
        chain: str,
        *,
        actor: str,
        kind: str,
        data: dict[str, Any],
        also: Sequence[Also] = (),
    ) -> ChainRecord:
        """Append one event to `chain` inside the connection's transaction, in two round trips:
        the chain's head row is read locked (it is what serialises appends to one chain), then
        the event is inserted and the head moved in one statement (PostgreSQL). A chain this
        process appended to last is tried first in one round trip, from the head it wrote
        (`HeadsSeen`); the head is read only when that guess is wrong. `also` (see `Also`) run in
        that same statement, and only if the event is appended, so that a hot row they lock (a
        team's week) is held only from there to the commit; SQLite runs them one after another.

        The total under "*" counts chains, not events, so only a chain's first append touches
        it: no row is shared by every append in the system."""
        if not self._total_current:
            await self._upgrade_total(conn)
        extras = [extra for _, _, extra in also]
        appending = None if self._sqlite else _appending_if_head_is(tuple(g for _, g, _ in also))
        guessed = None if appending is None else self._db.heads_seen.get(chain)
        if appending is not None and guessed is not None:
            record, params = self._chain_record(chain, guessed, actor=actor, kind=kind, data=data)
            for extra in extras:
                params.update(extra)
            event_id = (await conn.execute(appending, params)).scalar_one_or_none()
            if event_id is not None:
                self._db.heads_seen.wrote(chain, record.seq, record.hash)
                return replace(record, id=event_id)
        head = (await conn.execute(self._head_query, {"h_chain": chain})).first()
        new_chain = head is None
        if head is None:
            # First append since the chain was anchored (or ever): take turns per chain, and
            # look again, since another transaction may have anchored it meanwhile.
            await self._serialise_on(conn, chain)
            head = (await conn.execute(self._head_query, {"h_chain": chain})).first()
            new_chain = head is None
            if head is None:
                head = (await conn.execute(_LAST_EVENT, {"h_chain": chain})).first()
        head_now = (head[0], head[1]) if head is not None else (0, GENESIS_HASH)
        record, params = self._chain_record(chain, head_now, actor=actor, kind=kind, data=data)
        for extra in extras:
            params.update(extra)
        if new_chain or appending is None:
            event_id = (await conn.execute(_INSERT_EVENT, params)).scalar_one()
            await conn.execute(_INSERT_HEAD if new_chain else _MOVE_HEAD, params)
            for statement, _, _ in also:
                await conn.execute(statement, params)
            if new_chain:  # after `also`: the total's lock is the last one taken
                await self._count_chain(conn)
        else:
            # The head just read is locked: moving it "from" itself cannot miss.
            event_id = (await conn.execute(appending, params)).scalar_one()
        self._db.heads_seen.wrote(chain, record.seq, record.hash)
        return replace(record, id=event_id)

    def _chain_record(
        self, chain: str, head: tuple[int, str], *, actor: str, kind: str, data: dict[str, Any]
    ) -> tuple[ChainRecord, dict[str, Any]]:
        """The event that follows `head` (count, last hash) on `chain`, hashed under the audit
        key, and the parameters that insert it and move the head (its id is set once inserted)."""
        count, prev_hash = head
        seq, at = count + 1, utcnow()
        digest = event_hash(
            chain=chain,
            seq=seq,
            at=at,
            actor=actor,
            kind=kind,
            data=data,
            prev_hash=prev_hash,
            key=self.audit_key,
            scheme=SCHEME_HMAC,
        )
        params: dict[str, Any] = {
            "h_count": count,
            "e_chain": chain,
            "e_seq": seq,
            "e_at": at,
            "e_actor": actor,
            "e_kind": kind,
            "e_data": data,
            "e_prev_hash": prev_hash,
            "e_hash": digest,
            "e_scheme": SCHEME_HMAC,
            "h_chain": chain,
            "h_mac": head_mac(self.audit_key, chain, seq, digest),
        }
        record = ChainRecord(
            id=0,
            chain=chain,
            seq=seq,
            at=at,
            actor=actor,
            kind=kind,
            data=dict(data),
            prev_hash=prev_hash,
            hash=digest,
            scheme=SCHEME_HMAC,
        )
        return record, params

    @property
    def _head_query(self) -> Select[int, str]:
        return _HEAD if self._sqlite else _HEAD_LOCKED

    async def _serialise_on(self, conn: AsyncConnection, key: str) -> None:
        """`_serialise` on a connection."""
        if not self._sqlite:
            await conn.execute(_ADVISORY_LOCK, {"key": key})

    async def _count_chain(self, conn: AsyncConnection) -> None:
        """Count one more chain in the anchored total (a chain's first append only)."""
        await self._serialise_on(conn, ALL_CHAINS)
        total = (await conn.execute(self._head_query, {"h_chain": ALL_CHAINS})).first()
        # Missing: start over from this chain, so that any other head shows as extra.
        count, note = (total[0] + 1, total[1]) if total else (1, TOTAL_COUNTS_CHAINS)
        params = {
            "h_chain": ALL_CHAINS,
            "n_count": count,
            "n_hash": note,
            "h_mac": head_mac(self.audit_key, ALL_CHAINS, count, note),
        }
        await conn.execute(_MOVE_TOTAL if total else _INSERT_TOTAL, params)

    async def _upgrade_total(self, conn: AsyncConnection) -> None:
        """Once per store: a total written when it counted events (its last_hash is "") is
        turned into a count of chains. A total that disagreed with the heads keeps saying so.
        Read without a lock first: only a legacy total (once per database) is locked."""
        total = (await conn.execute(_HEAD, {"h_chain": ALL_CHAINS})).first()
        if total is None or total[1] != LEGACY_TOTAL:
            self._total_current = True  # nothing to change (a missing total shows on verify)
            return
        await self._serialise_on(conn, ALL_CHAINS)
        total = (await conn.execute(self._head_query, {"h_chain": ALL_CHAINS})).first()
        if total is None or total[1] != LEGACY_TOTAL:
            return
        events, chains = (await conn.execute(_HEADS_SUMMARY)).one()
        note = TOTAL_COUNTS_CHAINS
        if int(events) != total[0]:
            note = f"{TOTAL_COUNTS_CHAINS};events {total[0]} != {int(events)}"
        params = {
            "h_chain": ALL_CHAINS,
            "n_count": chains,
            "n_hash": note,
            "h_mac": head_mac(self.audit_key, ALL_CHAINS, chains, note),
        }
        await conn.execute(_MOVE_TOTAL_AND_NOTE, params)
        # Not marked current here: if this transaction rolls back, the next append does it.


Also = tuple[UpdateBase, UpdateBase, dict[str, Any]]
"""What an append also does, as prebuilt statements (bound parameters named apart from the
audit's): run on its own (SQLite, a chain's first append), the same guarded by the head's move
(PostgreSQL: selects from `HEAD_MOVED`, so it happens only if the event is appended), and their
parameters."""

_EVENTS = AuditEvent.__table__  # type: ignore[attr-defined]
_HEADS = AuditHead.__table__  # type: ignore[attr-defined]
_HEAD = sa_select(_HEADS.c.count, _HEADS.c.last_hash).where(_HEADS.c.chain == bindparam("h_chain"))
_HEAD_LOCKED = _HEAD.with_for_update()
_LAST_EVENT = (
    sa_select(_EVENTS.c.seq, _EVENTS.c.hash)
    .where(_EVENTS.c.chain == bindparam("h_chain"))
    .order_by(_EVENTS.c.seq.desc())
    .limit(1)
)
_ADVISORY_LOCK = text("SELECT pg_advisory_xact_lock(hashtext(:key))")
_EVENT_COLUMNS = ("chain", "seq", "at", "actor", "kind", "data", "prev_hash", "hash", "scheme")
_INSERT_EVENT = (
    insert(_EVENTS)
    .values({name: bindparam(f"e_{name}") for name in _EVENT_COLUMNS})
    .returning(_EVENTS.c.id)
)
_HEAD_VALUES: dict[str, Any] = {
    "count": bindparam("e_seq"),
    "last_hash": bindparam("e_hash"),
    "mac": bindparam("h_mac"),
}
_MOVE_HEAD = update(_HEADS).where(_HEADS.c.chain == bindparam("h_chain")).values(_HEAD_VALUES)
_INSERT_HEAD = insert(_HEADS).values(chain=bindparam("h_chain"), **_HEAD_VALUES)
_INSERT_TOTAL = insert(_HEADS).values(
    chain=bindparam("h_chain"),
    count=bindparam("n_count"),
    last_hash=bindparam("n_hash"),
    mac=bindparam("h_mac"),
)
_MOVE_TOTAL = (
    update(_HEADS)
    .where(_HEADS.c.chain == bindparam("h_chain"))
    .values(count=bindparam("n_count"), mac=bindparam("h_mac"))
)
_MOVE_TOTAL_AND_NOTE = _MOVE_TOTAL.values(last_hash=bindparam("n_hash"))
_HEADS_SUMMARY = sa_select(func.coalesce(func.sum(_HEADS.c.count), 0), func.count()).where(
    _HEADS.c.chain != ALL_CHAINS
)
_APPENDING: dict[tuple[UpdateBase, ...], UpdateBase] = {}


HEAD_MOVED = (
    update(_HEADS)
    .where(
        _HEADS.c.chain == bindparam("h_chain"),
        _HEADS.c.count == bindparam("h_count"),
        _HEADS.c.last_hash == bindparam("e_prev_hash"),
    )
    .values(_HEAD_VALUES)
    .returning(_HEADS.c.chain)
    .cte("moved")
)
"""PostgreSQL: move the head from the (count, hash) given; no row if it has moved since."""


def _appending_if_head_is(also: tuple[UpdateBase, ...]) -> UpdateBase:
    """PostgreSQL, one statement (built once per combination): move the head from the (count,
    hash) given, insert the event and run `also`, or, if the head has moved since, do none of
    them and return no row."""
    found = _APPENDING.get(also)
    if found is None:
        event = sa_select(
            *(bindparam(f"e_{name}", type_=_EVENTS.c[name].type) for name in _EVENT_COLUMNS)
        ).select_from(HEAD_MOVED)
        found = (
            insert(_EVENTS)
            .from_select(list(_EVENT_COLUMNS), event)
            .returning(_EVENTS.c.id)
            .add_cte(HEAD_MOVED)
        )
        for n, statement in enumerate(also):
            found = found.add_cte(statement.cte(f"also_{n}"))
        _APPENDING[also] = found
    return found


def _record(e: AuditEvent) -> ChainRecord:
    assert e.id is not None
    return ChainRecord(
        id=e.id,
        chain=e.chain,
        seq=e.seq,
        at=as_utc(e.at) or e.at,
        actor=e.actor,
        kind=e.kind,
        data=dict(e.data),
        prev_hash=e.prev_hash,
        hash=e.hash,
        scheme=e.scheme,
    )
