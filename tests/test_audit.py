"""The audit trail is a hash chain: it verifies when intact and names the first tampered event."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.fakes.anthropic import Reply
from tests.fakes.slack import FakeSlack
from tests.support.cli import cli_env, delegate
from tests.support.databases import Database
from tests.support.engine import Harness
from tests.support.factories import make_order
from workers.audit import (
    SCHEME_HMAC,
    SCHEME_SHA256,
    AuditKey,
    ChainRecord,
    event_hash,
    render_json,
    render_markdown,
)
from workers.config import Settings
from workers.store import Store
from workers.workorder import Status


async def _order_with_history(store: Store) -> str:
    order = await store.orders.create_order(make_order(), actor="U1")
    assert order.id
    await store.orders.transition(order.id, Status.AWAITING_CONFIRMATION, actor="intake", reason="drafted")
    await store.orders.transition(order.id, Status.QUEUED, actor="U1", reason="started")
    await store.audit.audit(order.id, actor="worker-1", kind="note", data={"step": "reading thread"})
    return order.id


async def test_intact_chains_verify(store: Store) -> None:
    await _order_with_history(store)
    await _order_with_history(store)
    await store.audit.audit("system", actor="admin", kind="config_loaded", data={})
    checked, breaks = await store.audit.verify_audit()
    assert checked == 9 and breaks == []


async def test_each_event_links_to_the_previous_hash(store: Store) -> None:
    order_id = await _order_with_history(store)
    trail = await store.audit.audit_trail(order_id)
    assert trail[0].prev_hash == "0" * 64
    for before, after in itertools.pairwise(trail):
        assert after.prev_hash == before.hash
    assert len({e.hash for e in trail}) == len(trail)


async def test_appends_by_two_processes_and_a_rolled_back_one_keep_one_intact_chain(
    database: Database,
) -> None:
    """Each process appends after the head it last wrote without reading it first (one round
    trip less on PostgreSQL); when another process has appended since, or the transaction of
    its last append rolled back, it must notice and link to the real head."""
    first, second = Store(database.engine()), Store(database.engine())
    try:
        chain = "WO-77"
        for n in range(3):  # each store's last head is stale by the other's append
            await first.audit.audit(chain, actor="a", kind="note", data={"n": n})
            await second.audit.audit(chain, actor="b", kind="note", data={"n": n})
        with pytest.raises(RuntimeError):
            async with first.audit.transaction() as s:
                await first.audit._append_audit(s, chain, actor="a", kind="lost", data={})
                raise RuntimeError("the transaction fails after its append")
        await first.audit.audit(chain, actor="a", kind="note", data={"n": "after"})

        trail = await first.audit.audit_trail(chain)
        assert [(e.seq, e.actor, e.kind) for e in trail] == [
            (1, "a", "note"), (2, "b", "note"), (3, "a", "note"), (4, "b", "note"),
            (5, "a", "note"), (6, "b", "note"), (7, "a", "note"),
        ]  # fmt: skip
        for before, after in itertools.pairwise(trail):
            assert after.prev_hash == before.hash
        checked, breaks = await second.audit.verify_audit()
        assert breaks == [] and checked == 7
        assert (await first.audit.audit_heads())[chain].count == 7
    finally:
        await first.close()
        await second.close()


async def test_edited_row_is_detected_and_named(store: Store) -> None:
    order_id = await _order_with_history(store)
    trail = await store.audit.audit_trail(order_id)
    victim = trail[2]
    async with store.engine.begin() as conn:
        await conn.execute(
            text("UPDATE audit_events SET actor = 'mallory' WHERE id = :id"), {"id": victim.id}
        )
    _, breaks = await store.audit.verify_audit()
    assert len(breaks) == 1
    assert breaks[0].event_id == victim.id and breaks[0].chain == order_id
    assert "altered" in str(breaks[0]) and f"#{victim.id}" in str(breaks[0])


async def test_deleted_row_is_detected(store: Store) -> None:
    order_id = await _order_with_history(store)
    trail = await store.audit.audit_trail(order_id)
    async with store.engine.begin() as conn:
        await conn.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": trail[1].id})
    _, breaks = await store.audit.verify_audit()
    assert [b.event_id for b in breaks] == [trail[2].id]


async def test_a_forgery_rehashed_without_the_key_is_caught_where_it_was_made(store: Store) -> None:
    """Recomputing a tampered event's digest, and every digest after it, needs the key."""
    order_id = await _order_with_history(store)
    trail = await store.audit.audit_trail(order_id)
    await _rewrite_from(store, trail, 1, actor="mallory", key=AuditKey(b"a-key-that-is-not-the-right-one"))
    _, breaks = await store.audit.verify_audit()
    assert [(b.chain, b.event_id) for b in breaks] == [(order_id, trail[1].id)]
    assert "altered" in str(breaks[0])


async def test_downgrading_to_the_old_unkeyed_hash_is_caught(store: Store) -> None:
    order_id = await _order_with_history(store)
    trail = await store.audit.audit_trail(order_id)
    await _rewrite_from(store, trail, 1, actor="mallory", key=None)  # plain SHA-256, as before
    _, breaks = await store.audit.verify_audit()
    assert [(b.chain, b.event_id) for b in breaks] == [(order_id, trail[1].id)]


async def test_dropping_the_last_events_is_caught(store: Store) -> None:
    order_id = await _order_with_history(store)
    trail = await store.audit.audit_trail(order_id)
    async with store.engine.begin() as conn:
        await conn.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": trail[-1].id})
    _, breaks = await store.audit.verify_audit()
    assert len(breaks) == 1 and breaks[0].chain == order_id
    assert f"events 4 to 4 were deleted after event #{trail[-2].id}" in str(breaks[0])


async def test_deleting_a_whole_chain_is_caught_even_with_its_head(store: Store) -> None:
    keep = await _order_with_history(store)
    gone = await _order_with_history(store)
    async with store.engine.begin() as conn:
        await conn.execute(text("DELETE FROM audit_events WHERE chain = :c"), {"c": gone})
    _, breaks = await store.audit.verify_audit()
    assert [b.chain for b in breaks] == [gone]
    assert "all 4 of its events were deleted" in str(breaks[0])
    # Removing the head too, and even the order itself, still shows in the anchored total.
    async with store.engine.begin() as conn:
        await conn.execute(text("DELETE FROM audit_heads WHERE chain = :c"), {"c": gone})
    _, breaks = await store.audit.verify_audit()
    assert [b.chain for b in breaks] == [gone, "*"]
    assert "the order exists, its trail does not" in str(breaks[0])
    assert "a whole chain was deleted" in str(breaks[1])
    assert keep not in {b.chain for b in breaks}


async def test_a_keyed_trail_does_not_verify_under_another_key(database: Database) -> None:
    key = AuditKey(b"k" * 32)
    writer = Store(database.engine(), audit_key=key)
    order_id = await _order_with_history(writer)
    assert (await writer.audit.verify_audit())[1] == []
    await writer.close()
    outsider = Store(database.engine(), audit_key=AuditKey(b"x" * 32))
    _, breaks = await outsider.audit.verify_audit()
    await outsider.close()
    assert breaks and breaks[0].chain == order_id and breaks[0].seq == 1


async def _rewrite_from(
    store: Store, trail: list[ChainRecord], start: int, *, actor: str, key: AuditKey | None
) -> None:
    """Edit event `start` and recompute it and every later digest, as an attacker with write
    access to the database (but not the key) would."""
    prev = trail[start - 1].hash
    async with store.engine.begin() as conn:
        for index, event in enumerate(trail[start:], start):
            who = actor if index == start else event.actor
            digest = event_hash(
                chain=event.chain, seq=event.seq, at=event.at, actor=who, kind=event.kind,
                data=event.data, prev_hash=prev, key=key,
                scheme=SCHEME_HMAC if key is not None else SCHEME_SHA256,
            )  # fmt: skip
            await conn.execute(
                text("UPDATE audit_events SET actor = :a, prev_hash = :p, hash = :h, scheme = :s WHERE id = :id"),
                {"a": who, "p": prev, "h": digest, "id": event.id,
                 "s": SCHEME_HMAC if key is not None else SCHEME_SHA256},
            )  # fmt: skip
            prev = digest
        await conn.execute(
            text("UPDATE audit_heads SET last_hash = :h WHERE chain = :c"), {"h": prev, "c": trail[0].chain}
        )


async def test_renderings(store: Store) -> None:
    order_id = await _order_with_history(store)
    trail = await store.audit.audit_trail(order_id)
    md = render_markdown(order_id, trail)
    assert md.startswith(f"# Audit trail for {order_id}")
    assert "| 3 |" in md and "started" in md and trail[-1].hash in md
    doc = json.loads(render_json(order_id, trail))
    assert [e["kind"] for e in doc["events"]] == ["created", "transition", "transition", "note"]
    assert doc["events"][-1]["hash"] == trail[-1].hash


async def test_a_run_chains_its_model_calls_tool_calls_and_deliverable(harness: Harness) -> None:
    h = harness
    order = await h.order()
    content = "| Acme | $10 |"
    h.anthropic.script(
        Reply.tool("read_thread", {}),
        Reply.tool("submit_deliverable", {"content": content, "summary": "done"}),
    )
    await h.run_next()
    trail = await h.store.audit.audit_trail(order.id or "")
    kinds = [e.kind for e in trail]
    assert kinds.count("model_call") == 2
    tool_calls = [e.data for e in trail if e.kind == "tool_call"]
    assert tool_calls[0]["name"] == "read_thread" and tool_calls[0]["allowed"] is True
    [delivered] = [e.data for e in trail if e.kind == "deliverable"]
    assert delivered["sha256"] == hashlib.sha256(content.encode()).hexdigest()
    model_call = next(e.data for e in trail if e.kind == "model_call")
    assert model_call["provider"] == "anthropic" and model_call["cost_micro_usd"] > 0
    assert (await h.store.audit.verify_audit())[1] == []


async def test_delegate_audit_verify_names_the_first_broken_order_and_event(
    database: Database, tmp_path: Path
) -> None:
    key = "an-audit-key-of-32-characters-xx"
    store = Store(database.engine(), audit_key=AuditKey(key.encode()))
    await _order_with_history(store)
    broken = await _order_with_history(store)
    trail = await store.audit.audit_trail(broken)
    await _rewrite_from(store, trail, 2, actor="mallory", key=AuditKey(b"guessed-key-guessed-key-guessed"))
    await store.close()
    env = cli_env(DATABASE_URL=database.url, DELEGATE_AUDIT_KEY=key)
    code, out, _ = await delegate("audit", "verify", env=env, cwd=tmp_path)
    assert code == 1
    assert f"BROKEN chain {broken}: event #{trail[2].id} (seq 3) was altered after it was written" in out
    code, out, _ = await delegate("audit", "verify", env=env | {"DELEGATE_AUDIT_KEY": "k" * 32}, cwd=tmp_path)
    assert code == 1 and "WO-1" in out  # under the wrong key nothing verifies


@pytest.mark.parametrize(
    ("table", "edit", "kind", "altered"),
    [
        ("deliverables", "content = '| Acme | $1 |'", "deliverable", "content"),
        ("tool_calls", "result_excerpt = 'nothing here'", "tool_call", "result"),
        ("llm_calls", "output_tokens = output_tokens + 1000", "model_call", "output_tokens"),
        ("llm_calls", "cost_micro_usd = 1", "model_call", "cost_micro_usd"),
    ],
)
async def test_delegate_audit_verify_recomputes_what_the_chain_recorded_of_a_run(
    harness: Harness,
    database: Database,
    tmp_path: Path,
    table: str,
    edit: str,
    kind: str,
    altered: str,
) -> None:
    """The chain holds a deliverable's digest, a tool result's digest and a model call's
    figures: a row edited in the database after it was written no longer matches them."""
    order = await harness.order()
    harness.anthropic.script(
        Reply.tool("read_thread", {}),
        Reply.tool("submit_deliverable", {"content": "| Acme | $10 |", "summary": "done"}),
    )
    await harness.run_next()
    env = cli_env(DATABASE_URL=database.url)
    code, out, _ = await delegate("audit", "verify", env=env, cwd=tmp_path)
    assert code == 0 and "OK" in out, out

    async with harness.store.engine.begin() as conn:
        victim = (await conn.execute(text(f"SELECT min(id) FROM {table}"))).scalar_one()
        await conn.execute(text(f"UPDATE {table} SET {edit} WHERE id = :id"), {"id": victim})
    [event] = [
        e
        for e in await harness.store.audit.audit_trail(order.id or "")
        if e.kind == kind and e.data[kind] == victim
    ]
    code, out, _ = await delegate("audit", "verify", env=env, cwd=tmp_path)
    assert code == 1
    what = kind.replace("_", " ")
    assert (
        f"BROKEN chain {order.id}: event #{event.id} (seq {event.seq}) names {what} {victim}, "
        f"whose {altered} was altered"
    ) in out, out


# Rollback: the heads and the total live in the database they protect, so whoever writes it can
# put back rows saved earlier. A signed checkpoint kept outside the database fixes a floor.

CHECKPOINT_KEY = "a-checkpoint-key-of-32-characters"


async def _keyed_store(database: Database) -> Store:
    return Store(database.engine(), audit_key=AuditKey(CHECKPOINT_KEY.encode()))


async def _saved_row(store: Store, chain: str) -> dict[str, object]:
    async with store.engine.begin() as conn:
        row = (
            await conn.execute(text("SELECT * FROM audit_heads WHERE chain = :c"), {"c": chain})
        ).one()
    return dict(row._mapping)


async def _put_back(store: Store, row: dict[str, object]) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(text("DELETE FROM audit_heads WHERE chain = :chain"), row)
        await conn.execute(
            text(
                "INSERT INTO audit_heads (chain, count, last_hash, mac) "
                "VALUES (:chain, :count, :last_hash, :mac)"
            ),
            row,
        )


async def test_rolling_a_chain_back_to_an_old_head_is_caught_by_the_checkpoint(
    database: Database, tmp_path: Path
) -> None:
    store = await _keyed_store(database)
    await _order_with_history(store)
    victim = await _order_with_history(store)
    old_head = await _saved_row(store, victim)  # 4 events
    await store.audit.audit(victim, actor="worker-1", kind="note", data={"step": "paid the vendor"})
    await store.audit.audit(victim, actor="worker-1", kind="note", data={"step": "sent the money"})
    env = cli_env(DATABASE_URL=database.url, DELEGATE_AUDIT_KEY=CHECKPOINT_KEY)
    checkpoints = tmp_path / "checkpoints.jsonl"
    code, out, err = await delegate("audit", "checkpoint", "--to", str(checkpoints), env=env, cwd=tmp_path)
    assert code == 0 and "2 chains, 10 events" in out, out + err

    async with store.engine.begin() as conn:
        await conn.execute(text("DELETE FROM audit_events WHERE chain = :c AND seq > 4"), {"c": victim})
    await _put_back(store, old_head)
    await store.close()

    code, out, _ = await delegate("audit", "verify", env=env, cwd=tmp_path)
    assert code == 0 and "OK" in out, out  # the gap the checkpoint closes
    code, out, _ = await delegate("audit", "verify", "--checkpoint", str(checkpoints), env=env, cwd=tmp_path)
    assert code == 1, out
    assert f"BROKEN chain {victim}: seq 5 is missing: rolled back below the checkpoint of " in out
    assert "which anchored 6 events" in out


async def test_erasing_a_whole_order_with_the_old_total_is_caught_by_the_checkpoint(
    database: Database, tmp_path: Path
) -> None:
    store = await _keyed_store(database)
    await _order_with_history(store)
    old_total = await _saved_row(store, "*")  # counts one chain
    victim = await _order_with_history(store)
    env = cli_env(DATABASE_URL=database.url, DELEGATE_AUDIT_KEY=CHECKPOINT_KEY)
    code, out, err = await delegate("audit", "checkpoint", "--to", str(tmp_path), env=env, cwd=tmp_path)
    assert code == 0, out + err

    async with store.engine.begin() as conn:
        await conn.execute(text("DELETE FROM audit_events WHERE chain = :c"), {"c": victim})
        await conn.execute(text("DELETE FROM audit_heads WHERE chain = :c"), {"c": victim})
        await conn.execute(text("DELETE FROM transitions WHERE order_id = 2"))
        await conn.execute(text("DELETE FROM outbox WHERE order_id = 2"))
        await conn.execute(text("DELETE FROM work_orders WHERE id = 2"))
    await _put_back(store, old_total)
    await store.close()

    code, out, _ = await delegate("audit", "verify", env=env, cwd=tmp_path)
    assert code == 0 and "OK" in out, out  # the gap the checkpoint closes
    code, out, _ = await delegate("audit", "verify", "--checkpoint", str(tmp_path), env=env, cwd=tmp_path)
    assert code == 1, out
    assert (
        f"BROKEN chain {victim}: seq 1 is missing: the whole trail is gone, the checkpoint of "
    ) in out and "anchored 4 events" in out
    assert "fewer than the 8 the checkpoint of" in out


async def test_a_checkpoint_edited_by_hand_is_refused(database: Database, tmp_path: Path) -> None:
    store = await _keyed_store(database)
    await _order_with_history(store)
    await store.close()
    env = cli_env(DATABASE_URL=database.url, DELEGATE_AUDIT_KEY=CHECKPOINT_KEY)
    checkpoints = tmp_path / "checkpoints.jsonl"
    code, out, err = await delegate("audit", "checkpoint", "--to", str(checkpoints), env=env, cwd=tmp_path)
    assert code == 0, out + err
    doc = json.loads(checkpoints.read_text())
    doc["events"] = 1
    checkpoints.write_text(checkpoints.read_text() + json.dumps(doc) + "\n")
    code, out, _ = await delegate("audit", "verify", "--checkpoint", str(checkpoints), env=env, cwd=tmp_path)
    assert code == 1
    assert (
        f"BROKEN checkpoint: the last checkpoint in {checkpoints} (line 2) was altered, or was not "
        "signed with this audit key"
    ) in out


async def test_a_trail_that_grew_since_the_checkpoint_is_consistent_with_it(
    database: Database, tmp_path: Path
) -> None:
    store = await _keyed_store(database)
    first = await _order_with_history(store)
    env = cli_env(DATABASE_URL=database.url, DELEGATE_AUDIT_KEY=CHECKPOINT_KEY)
    checkpoints = tmp_path / "checkpoints.jsonl"
    code, out, err = await delegate("audit", "checkpoint", "--to", str(checkpoints), env=env, cwd=tmp_path)
    assert code == 0, out + err
    at = json.loads(checkpoints.read_text())["at"]
    await store.audit.audit(first, actor="worker-1", kind="note", data={"step": "more work"})
    await _order_with_history(store)
    await store.close()
    code, out, _ = await delegate("audit", "verify", "--checkpoint", str(checkpoints), env=env, cwd=tmp_path)
    assert code == 0, out
    assert f"OK: 2 chains, 9 events verified, consistent with checkpoint of {at}." in out


async def test_delegate_run_writes_and_posts_a_checkpoint_when_configured(
    database: Database,
    tmp_path: Path,
    settings_factory: Callable[..., Settings],
    fake_slack: FakeSlack,
) -> None:
    from bot.jobs import Jobs
    from bot.runner import add_audit_checkpoints
    from bot.slack_client import make_slack_client

    store = await _keyed_store(database)
    await _order_with_history(store)
    jobs = Jobs()
    settings = settings_factory(slack_api_url=fake_slack.api_url)
    client = make_slack_client(settings)
    add_audit_checkpoints(jobs, settings, store, client)
    assert jobs.scheduler.get_jobs() == []  # off unless configured
    settings = settings_factory(
        slack_api_url=fake_slack.api_url,
        audit={"checkpoint_path": str(tmp_path), "checkpoint_channel": "C0AUDIT"},
    )
    add_audit_checkpoints(jobs, settings, store, client)
    [job] = jobs.scheduler.get_jobs()
    assert job.trigger.interval.total_seconds() == 3600
    await job.func(*job.args)
    await store.close()
    [line] = (tmp_path / "audit-checkpoints.jsonl").read_text().splitlines()
    assert json.loads(line)["events"] == 4
    env = cli_env(DATABASE_URL=database.url, DELEGATE_AUDIT_KEY=CHECKPOINT_KEY)
    code, out, _ = await delegate("audit", "verify", "--checkpoint", str(tmp_path), env=env, cwd=tmp_path)
    assert code == 0 and "consistent with checkpoint of" in out, out
    # The channel gets the same line, to be saved to a file and verified against.
    posted = fake_slack.last_call("chat.postMessage").args
    assert posted["channel"] == "C0AUDIT" and "1 chains, 4 events" in posted["text"]
    assert posted["text"].split("```")[1] == line
    # An unchanged trail is not written or posted again; a grown one is.
    posts = len(fake_slack.calls_to("chat.postMessage"))
    store = await _keyed_store(database)
    try:
        await job.func(store, *job.args[1:])
        assert len((tmp_path / "audit-checkpoints.jsonl").read_text().splitlines()) == 1
        assert len(fake_slack.calls_to("chat.postMessage")) == posts
        await _order_with_history(store)
        await job.func(store, *job.args[1:])
        lines = (tmp_path / "audit-checkpoints.jsonl").read_text().splitlines()
        assert [json.loads(x)["events"] for x in lines] == [4, 8]
    finally:
        await store.close()


async def test_checkpoint_commands_explain_a_missing_path_or_file(tmp_path: Path) -> None:
    env = cli_env(DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'd.db'}", DELEGATE_AUDIT_KEY=CHECKPOINT_KEY)
    await delegate("db", "upgrade", env=env, cwd=tmp_path)
    code, _, err = await delegate("audit", "checkpoint", env=env, cwd=tmp_path)
    assert code == 2 and "--to PATH, or set audit.checkpoint_path" in err
    missing = tmp_path / "nowhere.jsonl"
    code, out, err = await delegate("audit", "verify", "--checkpoint", str(missing), env=env, cwd=tmp_path)
    assert code == 1 and f"BROKEN checkpoint: cannot read {missing}" in out and "Traceback" not in err
    code, out, err = await delegate("audit", "checkpoint", "--to", str(tmp_path / "no" / "dir.jsonl"), env=env, cwd=tmp_path)
    assert code == 1 and "cannot write" in err and "Traceback" not in err
