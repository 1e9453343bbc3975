"""Storage round trips on SQLite and PostgreSQL: orders, transitions, runs, Slack bookkeeping."""

from __future__ import annotations

import asyncio
import importlib.util
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text, update
from sqlmodel import col

from tests.support.databases import Database
from tests.support.factories import make_order
from tests.support.records import llm_calls
from workers.store.runs import Checkpoint
from workers.budget import Headroom, _stop_message
from workers.db import create_engine
from workers.errors import BudgetExceeded, IllegalTransition, NotFound, OrderMoved
from workers.migrate import current_revision, head_revision
from workers.models import LlmCall, ToolCall, WorkOrderRow
from workers.progress import HeldBack
from workers.states import EDITABLE, WaitKind
from workers.store import Admission, Store
from workers.store.base import order_number
from workers.workorder import Status, WorkloadClass


def _migration(name: str) -> ModuleType:
    path = Path(__file__).parents[1] / "workers" / "migrations" / "versions" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"migration_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_migrations_reach_head_and_match_the_models(database: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    engine = database.engine()
    try:
        assert await current_revision(engine) == head_revision()

        def diff(conn):  # type: ignore[no-untyped-def]
            return compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)

        async with engine.connect() as conn:
            assert await conn.run_sync(diff) == []
    finally:
        await engine.dispose()


async def test_order_round_trip_keeps_every_field(store: Store) -> None:
    deadline = datetime(2026, 12, 1, 17, 30, tzinfo=UTC)
    draft = make_order(
        deadline=deadline,
        workload_class=WorkloadClass.DEEP,
        context="From #marketing",
        verification={"automatic_checks": False, "reviewers": ["U2", "U3"]},
    )
    created = await store.orders.create_order(draft, actor="U1")
    assert created.id is not None and created.id.startswith("WO-")
    loaded = await store.orders.get_order(created.id)
    assert loaded == created
    assert loaded.model_dump(exclude={"id"}) == draft.model_dump(exclude={"id"})
    assert loaded.deadline == deadline


async def test_order_ids_are_sequential(store: Store) -> None:
    first = await store.orders.create_order(make_order(), actor="U1")
    second = await store.orders.create_order(make_order(), actor="U1")
    assert int(second.id[3:]) == int(first.id[3:]) + 1  # type: ignore[index]


async def test_missing_order_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="WO-999"):
        await store.orders.get_order("WO-999")


async def test_transitions_are_applied_and_audited(store: Store) -> None:
    order = await store.orders.create_order(make_order(), actor="U1")
    assert order.id
    await store.orders.transition(
        order.id, Status.AWAITING_CONFIRMATION, actor="intake", reason="draft ready"
    )
    queued = await store.orders.transition(order.id, Status.QUEUED, actor="U1", reason="Start clicked")
    assert queued.status is Status.QUEUED
    with pytest.raises(IllegalTransition):
        await store.orders.transition(order.id, Status.APPROVED, actor="U2", reason="skip ahead")
    assert (await store.orders.get_order(order.id)).status is Status.QUEUED

    trail = await store.audit.audit_trail(order.id)
    assert [e.kind for e in trail] == ["created", "transition", "transition"]
    assert trail[2].actor == "U1"
    assert trail[2].data == {
        "from": "awaiting_confirmation",
        "to": "queued",
        "reason": "Start clicked",
    }


async def test_concurrent_transitions_only_one_wins(store: Store) -> None:
    """Two processes racing to start the same order: exactly one succeeds."""
    order = await store.orders.create_order(make_order(status=Status.AWAITING_CONFIRMATION), actor="U1")
    assert order.id
    other = Store(store.engine)  # a second manager over the same database
    results = await asyncio.gather(
        store.orders.transition(order.id, Status.QUEUED, actor="U1", reason="click 1"),
        other.orders.transition(order.id, Status.QUEUED, actor="U1", reason="click 2"),
        return_exceptions=True,
    )
    assert sum(isinstance(r, IllegalTransition) for r in results) == 1
    assert [e.kind for e in await store.audit.audit_trail(order.id)].count("transition") == 1


async def test_update_order_validates_and_audits_changes(store: Store) -> None:
    order = await store.orders.create_order(make_order(), actor="U1")
    assert order.id
    drafting = {Status.DRAFTING}
    updated = await store.orders.update_order(order.id, actor="U1", expected=drafting, title="New title")
    assert updated.title == "New title"
    with pytest.raises(ValueError):
        await store.orders.update_order(order.id, actor="U1", expected=drafting, acceptance_criteria=[])
    with pytest.raises(ValueError, match="not editable"):
        await store.orders.update_order(order.id, actor="U1", expected=drafting, status="approved")
    assert (await store.orders.get_order(order.id)).title == "New title"
    edit = (await store.audit.audit_trail(order.id))[-1]
    assert edit.kind == "edited"
    assert edit.data["changes"]["title"]["to"] == "New title"


async def test_list_orders_filters_by_requester_and_status(store: Store) -> None:
    mine = await store.orders.create_order(make_order(requester="U1"), actor="U1")
    await store.orders.create_order(make_order(requester="U2"), actor="U2")
    assert [o.id for o in await store.orders.list_orders(requester="U1")] == [mine.id]
    assert await store.orders.list_orders(statuses=[Status.QUEUED]) == []


async def test_attempts_checkpoints_and_calls_round_trip(store: Store) -> None:
    order = await store.orders.create_order(make_order(status=Status.AWAITING_CONFIRMATION), actor="U1")
    assert order.id
    gate = Admission(
        week="2026-11-16", quota_micro_usd=lambda _: 10**9, max_runs_per_user=lambda _: 9
    )
    await store.queue.enqueue(order.id, priority=1, actor="U1", reason="started")
    first = (await store.queue.claim("w1", lease_ttl_s=60, admission=gate)).attempt
    assert first is not None and first.id is not None
    history = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
    ]
    await store.runs.save_step(
        first.id, checkpoint=Checkpoint(history, step=2, elapsed_ms=0)
    )
    await store.queue.finish_run(
        order.id, "w1", Status.QUEUED, reason="asked to wait", attempt_id=first.id
    )
    second = (await store.queue.claim("w2", lease_ttl_s=60, admission=gate)).attempt
    assert second is not None and (first.number, second.number) == (1, 2)

    resumed = await store.runs.latest_checkpoint(order.id)
    assert resumed is not None and resumed.checkpoint == history and resumed.step == 2

    number = int(order.id[3:])
    await store.ledger.record_llm_call(
        LlmCall(
            order_id=number,
            attempt_id=first.id,
            role="execute",
            provider="anthropic",
            model="claude-sonnet-4-5",
            input_tokens=1200,
            output_tokens=300,
            cache_write_tokens=1000,
            cache_read_tokens=0,
            cost_micro_usd=12_345,
            latency_ms=850,
        )
    )
    await store.runs.record_tool_call(
        ToolCall(
            order_id=number,
            attempt_id=second.id,  # a run's records are fenced by its live attempt
            name="web_fetch",
            arguments={"url": "http://169.254.169.254/"},
            allowed=False,
            outcome="denied",
            error="address is link-local",
        )
    )
    [call] = await llm_calls(store, order.id)
    assert (call.model, call.cache_write_tokens, call.cost_micro_usd) == (
        "claude-sonnet-4-5",
        1000,
        12_345,
    )
    [tool] = await store.runs.tool_calls(order.id)
    assert tool.allowed is False and tool.arguments == {"url": "http://169.254.169.254/"}


async def test_event_dedupe_is_unique_across_managers(store: Store) -> None:
    other = Store(store.engine)
    results = await asyncio.gather(
        *(s.slack.mark_event_seen("Ev123", kind="app_mention") for s in [store, other, store, other])
    )
    assert sorted(results) == [False, False, False, True]
    assert await store.slack.mark_event_seen("Ev124") is True


async def test_slack_message_bookkeeping_is_keyed(store: Store) -> None:
    order = await store.orders.create_order(make_order(), actor="U1")
    assert order.id
    assert await store.slack.slack_message(f"{order.id}:status") is None
    await store.slack.save_slack_message(
        key=f"{order.id}:status", purpose="status", channel="C1", ts="1.1", order=order.id
    )
    await store.slack.save_slack_message(
        key=f"{order.id}:status", purpose="status", channel="C1", ts="1.2", order=order.id
    )
    saved = await store.slack.slack_message(f"{order.id}:status")
    assert saved is not None and saved.ts == "1.2"


async def test_sqlite_runs_in_wal_mode_with_foreign_keys(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() >= 5000
    finally:
        await engine.dispose()


async def test_foreign_keys_are_enforced(store: Store) -> None:
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError):
        await store.runs.record_tool_call(ToolCall(order_id=424242, name="read_thread"))


async def test_timestamps_come_back_in_utc(store: Store) -> None:
    order = await store.orders.create_order(make_order(), actor="U1")
    assert order.id
    [created] = await store.audit.audit_trail(order.id)
    assert created.at.tzinfo is not None
    assert abs(created.at - datetime.now(UTC)) < timedelta(minutes=1)


async def test_thread_messages_are_stored_once_in_order(store: Store) -> None:
    for ts, text_ in [("1.3", "third"), ("1.1", "root"), ("1.2", "second")]:
        assert await store.slack.record_thread_message(
            channel="C1", thread_ts="1.1", ts=ts, text=text_, user="U1"
        )
    assert not await store.slack.record_thread_message(
        channel="C1", thread_ts="1.1", ts="1.2", text="again"
    )
    await store.slack.record_thread_message(channel="C2", thread_ts="1.1", ts="1.4", text="elsewhere")
    assert [m.text for m in await store.slack.thread_messages("C1", "1.1")] == ["root", "second", "third"]


async def test_state_changes_are_copied_to_transitions_and_the_migration_backfills_them(
    database: Database,
) -> None:
    """Each move writes a `transitions` row next to its audit event; migration 0009 rebuilds the
    same rows from the audit trail of a database that had none."""
    store = Store(database.engine())
    try:
        order = await store.orders.create_order(make_order(), actor="U1")
        assert order.id
        for target, actor in [
            (Status.AWAITING_CONFIRMATION, "intake"),
            (Status.QUEUED, "U1"),
            (Status.RUNNING, "w1"),
            (Status.EXCEPTION, "w1"),
        ]:
            audit = {"kind": "budget"} if target is Status.EXCEPTION else None
            await store.orders.transition(order.id, target, actor=actor, reason="test", audit=audit)
        await store.audit.audit("system", actor="U1", kind="note")  # not an order's chain
        query = text(
            "SELECT order_id, seq, at, actor, from_status, to_status, entered_at, exception_kind"
            " FROM transitions ORDER BY order_id, seq"
        )
        async with store.engine.connect() as conn:
            written = (await conn.execute(query)).all()
        trail = [e for e in await store.audit.audit_trail(order.id) if e.kind == "transition"]
        assert [(r.seq, r.actor, r.from_status, r.to_status) for r in written] == [
            (e.seq, e.actor, e.data["from"], e.data["to"]) for e in trail
        ]
        assert [r.exception_kind for r in written] == [None, None, None, "budget"]
        assert [r.entered_at for r in written] == [None, *(r.at for r in written[:-1])]

        def backfill(connection: Connection) -> None:
            connection.execute(text("DELETE FROM transitions"))  # as before the migration
            with Operations.context(MigrationContext.configure(connection)):
                _migration("0009_transitions")._backfill()

        async with store.engine.begin() as conn:
            await conn.run_sync(backfill)
        async with store.engine.connect() as conn:
            assert (await conn.execute(query)).all() == written
    finally:
        await store.close()


async def test_self_approvals_are_marked_and_the_migration_marks_earlier_ones(
    database: Database,
) -> None:
    """An approval by the order's own requester is recorded as self-approved, on the order and
    on its move into approved; migration 0015 marks the approvals made before it the same way."""
    store = Store(database.engine())
    try:
        approvers = {}
        for approver in ("U1", "U7"):  # the requester, and a reviewer
            order = await store.orders.create_order(make_order(), actor="U1")
            assert order.id
            for target in (
                Status.AWAITING_CONFIRMATION,
                Status.QUEUED,
                Status.RUNNING,
                Status.VERIFYING,
                Status.AWAITING_REVIEW,
            ):
                await store.orders.transition(order.id, target, actor="U1", reason="test")
            decided = await store.orders.decide_on(
                order.id, Status.APPROVED, deliverable_id=None, actor=approver, reason="approved"
            )
            approvers[order.id] = (approver, decided.self_approved)
        assert list(approvers.values()) == [("U1", True), ("U7", False)]
        query = text(
            "SELECT w.id, w.self_approved, t.exception_kind FROM work_orders w "
            "JOIN transitions t ON t.order_id = w.id AND t.to_status = 'approved' ORDER BY w.id"
        )
        async with store.engine.connect() as conn:
            written = [(i, bool(s), k) for i, s, k in (await conn.execute(query)).all()]
        assert [(s, k) for _, s, k in written] == [(True, "self_approved"), (False, None)]

        def mark(connection: Connection) -> None:
            # As before the migration: no approval is marked.
            connection.execute(text("UPDATE transitions SET exception_kind = NULL"))
            connection.execute(text("UPDATE work_orders SET self_approved = FALSE"))
            with Operations.context(MigrationContext.configure(connection)):
                _migration("0015_self_approved")._mark_self_approvals()

        async with store.engine.begin() as conn:
            await conn.run_sync(mark)
        async with store.engine.connect() as conn:
            assert [(i, bool(s), k) for i, s, k in (await conn.execute(query)).all()] == written
    finally:
        await store.close()


async def test_an_edit_that_expects_a_state_the_order_has_left_is_refused_and_changes_nothing(
    store: Store,
) -> None:
    """Edit read the order waiting for Start; Start queued it before Edit wrote."""
    order = await store.orders.create_order(make_order(), actor="U1")
    assert order.id
    await store.orders.transition(order.id, Status.AWAITING_CONFIRMATION, actor="intake", reason="draft")
    read = await store.orders.get_order(order.id)
    await store.orders.transition(order.id, Status.QUEUED, actor="U1", reason="started")
    trail = [(e.seq, e.kind) for e in await store.audit.audit_trail(order.id)]

    with pytest.raises(OrderMoved) as refused:
        await store.orders.update_order(
            order.id,
            actor="U1",
            expected=EDITABLE,
            title="Changed",
            budget=read.budget.model_copy(update={"max_usd": 9.0}),
        )
    assert (refused.value.order_id, refused.value.current) == (order.id, "queued")
    after = await store.orders.get_order(order.id)
    assert (after.status, after.title, after.budget.max_usd) == (Status.QUEUED, read.title, 2.0)
    assert [(e.seq, e.kind) for e in await store.audit.audit_trail(order.id)] == trail


async def test_orders_waiting_before_wait_kinds_existed_are_backfilled_by_their_wording(
    database: Database,
) -> None:
    """Migration 0016 gives orders already waiting their kind from how each wait was worded
    (the metrics read the kind, never the words)."""
    claim = HeldBack.team_quota("growth", used_micro_usd=5, quota_micro_usd=5).describe()
    run = str(BudgetExceeded("team_quota", _stop_message("team_quota", Headroom(0, 0, 0, 0), 10)))
    slot = HeldBack.user_runs("U1", running=2, limit=2).describe()
    provider = "waiting for the model provider: overloaded"
    reasons = [claim, run, slot, provider, None]
    store = Store(database.engine())
    try:
        ids = []
        for reason in reasons:
            order = await store.orders.create_order(make_order(), actor="U1")
            ids.append(order_number(order.id or ""))
            async with store.engine.begin() as conn:
                await conn.execute(
                    update(WorkOrderRow)
                    .where(col(WorkOrderRow.id) == ids[-1])
                    .values(wait_reason=reason, wait_kind=None)
                )

        def backfill(connection: Connection) -> None:
            with Operations.context(MigrationContext.configure(connection)):
                _migration("0016_wait_kind")._backfill()

        async with store.engine.begin() as conn:
            await conn.run_sync(backfill)
        kinds = [(await store.orders.get_row(i)).wait_kind for i in ids]
        assert kinds == [WaitKind.QUOTA, WaitKind.QUOTA, WaitKind.SLOT, WaitKind.PROVIDER, None]
    finally:
        await store.close()
