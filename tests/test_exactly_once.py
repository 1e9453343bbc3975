"""One road, exactly once (the delivery issue, failures 1, 2 and 4): every message is an outbox
row written with the change that makes it necessary, and a post whose outcome is unknown is
looked for before it is made again. Each test runs on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from bot.delivery import Deliverer
from bot.reporter import SlackReporter
from bot.slack_client import make_slack_client
from tests.fakes.slack import FakeSlack
from tests.support.factories import make_order
from tests.support.waiting import eventually
from workers import queue
from workers.budget import quota_week
from workers.config import Settings
from workers.keys import domain_key, exception_key, result_key, review_key, status_key
from workers.models import OutboxMessage, utcnow
from workers.store import OutboxItem, Store
from workers.workorder import Status, WorkOrder

THREAD = "1700000000.000100"


def _client(fake_slack: FakeSlack) -> AsyncWebClient:
    """No retry handlers: every failure reaches the deliverer at once."""
    return AsyncWebClient(token=fake_slack.token, base_url=fake_slack.api_url)


def _deliverer(store: Store, client: AsyncWebClient) -> Deliverer:
    reporter = SlackReporter(store=store, client=client, settings=Settings())
    return Deliverer(store, reporter, poll_s=0.02, backoff_s=0.01, max_backoff_s=0.05)


async def _deliver_until(deliverer: Deliverer, predicate: Any) -> None:
    async def done() -> bool:
        await deliverer.deliver_due()
        return bool(predicate())

    await eventually(done, timeout_s=30, interval_s=0.02)


def _in_thread(fake_slack: FakeSlack, key: str) -> list[dict[str, Any]]:
    """Messages in the order's thread that carry `key` (what the people there see)."""
    return [
        m
        for m in fake_slack.messages_in("C1", THREAD)
        if ((m.get("metadata") or {}).get("event_payload") or {}).get("key") == key
    ]


def _files_in_thread(fake_slack: FakeSlack) -> list[str]:
    return [f["name"] for m in fake_slack.messages_in("C1", THREAD) for f in m.get("files") or []]


async def _order(store: Store, **fields: Any) -> WorkOrder:
    return await store.orders.create_order(
        make_order(status=Status.AWAITING_CONFIRMATION, **fields), actor="U1"
    )


async def _owed(store: Store, order: WorkOrder, key: str, kind: str = "exception") -> None:
    assert order.id
    await store.outbox.add_to_outbox(order.id, [OutboxItem(kind, key, {"kind": "budget", "message": "m"})])


# ------------------------------------------------------------ 1. written with the change


async def test_a_quota_wait_that_ends_in_exception_owes_the_thread_its_notice(
    store: Store, settings_factory: Any
) -> None:
    """The claim that moves an order to exception writes its notice and its status in the same
    transaction: no process has to survive to say it (lost 2 of 2 under SIGKILL before)."""
    settings: Settings = settings_factory(engine={"max_quota_wait_s": 60})
    await store.ledger.set_team_quota("default", quota_week(utcnow()), quota_micro_usd=0, actor="lead")
    order = await _order(store)
    assert order.id
    await queue.enqueue(store, settings, order.id, actor="U1")
    first = await store.queue.claim("w1", lease_ttl_s=5, admission=queue.admission(settings))
    assert first.waiting  # held back for quota: its status says so, from the same transaction
    [waiting] = await store.outbox.outbox(order.id)
    assert waiting.kind == "status" and waiting.payload["waiting"] is True
    later = utcnow() + timedelta(seconds=120)
    await store.queue.claim("w1", lease_ttl_s=5, admission=queue.admission(settings, later), now=later)
    assert (await store.orders.get_order(order.id)).status is Status.EXCEPTION

    by_kind = {m.kind: m for m in await store.outbox.outbox(order.id)}
    assert by_kind["exception"].payload["kind"] == "quota"
    assert by_kind["exception"].key.startswith(exception_key(order.id, "quota"))
    assert by_kind["status"].payload["step"].startswith("Stopped: ")


async def test_a_domain_request_owes_the_thread_its_prompt_from_the_moment_it_exists(
    store: Store,
) -> None:
    order = await _order(store)
    assert order.id
    approval = await store.approvals.request_domain_approval(
        order.id, tool_use_id="toolu_1", host="example.org", url="https://example.org/x", reason="r"
    )
    [prompt] = [m for m in await store.outbox.outbox(order.id) if m.kind == "domain"]
    assert prompt.key == domain_key(order.id, approval.id)
    assert prompt.payload["host"] == "example.org" and prompt.sent_at is None


async def test_a_late_step_never_replaces_the_state_an_order_rests_in(store: Store) -> None:
    """One coalesced status row per order; a step reported after the run left its state (a
    slow tool's description arriving after the order went to exception) is not shown."""
    order = await _order(store)
    assert order.id
    settings = Settings()
    await queue.enqueue(store, settings, order.id, actor="U1")
    for step in ("one", "two", "three"):
        assert await store.outbox.report_status(order.id, step)
    [status] = [m for m in await store.outbox.outbox(order.id) if m.kind == "status"]
    assert status.payload["step"] == "three" and status.key == status_key(order.id)

    await queue.cancel(store, order.id, actor="U1", reason="not needed")
    assert not await store.outbox.report_status(order.id, "Reading example.org")
    [status] = [m for m in await store.outbox.outbox(order.id) if m.kind == "status"]
    assert status.payload["step"] == "Cancelled" and status.payload["by"] == "U1"


# ------------------------------------------------------------ 2. uncertain posts


async def test_a_post_made_before_its_500_is_not_posted_again(
    store: Store, fake_slack: FakeSlack
) -> None:
    order = await _order(store)
    key = exception_key(order.id or "", 1)
    await _owed(store, order, key)
    # Slack posts it, then answers 500 (twice: the second try must look, not post).
    fake_slack.fail_next("chat.postMessage", 500, processed=True)
    deliverer = _deliverer(store, _client(fake_slack))

    async def sent() -> bool:
        await deliverer.deliver_due()
        [message] = await store.outbox.outbox(order.id or "")
        return message.sent_at is not None

    await eventually(sent, timeout_s=30, interval_s=0.02)
    assert len(_in_thread(fake_slack, key)) == 1
    assert len(fake_slack.calls_to("chat.postMessage")) == 1  # found, not posted again


async def test_a_failed_lookup_is_retried_later_never_answered_by_posting(
    store: Store, fake_slack: FakeSlack
) -> None:
    order = await _order(store)
    key = exception_key(order.id or "", 1)
    await _owed(store, order, key)
    fake_slack.fail_next("chat.postMessage", 503, processed=True)
    fake_slack.fail_next("conversations.replies", 500, times=3)
    deliverer = _deliverer(store, _client(fake_slack))

    async def looked_four_times() -> bool:
        await deliverer.deliver_due()
        return len(fake_slack.calls_to("conversations.replies")) >= 4

    await eventually(looked_four_times, timeout_s=30, interval_s=0.02)
    await _deliver_until(deliverer, lambda: True)
    assert len(fake_slack.calls_to("chat.postMessage")) == 1
    assert len(_in_thread(fake_slack, key)) == 1
    [message] = await store.outbox.outbox(order.id or "")
    assert message.sent_at is not None


async def test_the_client_never_repeats_a_post_on_its_own(
    store: Store, fake_slack: FakeSlack, settings_factory: Any
) -> None:
    """The production client retries 5xx and dropped connections, but not a post: Slack may
    have made it, and only the reporter can look (12 of 12 doubled after an outage before)."""
    settings = settings_factory(slack_api_url=fake_slack.api_url)
    client = make_slack_client(settings, backoff_factor_s=0.01)
    order = await _order(store)
    key = exception_key(order.id or "", 1)
    await _owed(store, order, key)
    fake_slack.fail_next("chat.postMessage", 503, processed=True, times=2)
    deliverer = _deliverer(store, client)

    async def sent() -> bool:
        await deliverer.deliver_due()
        return all(m.sent_at is not None for m in await store.outbox.outbox(order.id or ""))

    await eventually(sent, timeout_s=30, interval_s=0.02)
    assert len(_in_thread(fake_slack, key)) == 1


async def test_a_review_prompt_and_its_result_survive_a_sustained_outage_once_each(
    store: Store, fake_slack: FakeSlack, settings_factory: Any
) -> None:
    """Posts made with their answers lost (timeouts, then 500s), for many tries: once each."""
    settings = settings_factory()
    order = await _order(store)
    assert order.id
    await queue.enqueue(store, settings, order.id, actor="U1")
    claim = await queue.claim(store, settings, "w1")
    assert claim.order is not None
    deliverable = await store.runs.save_deliverable(
        order.id, tool_use_id="t1", content="the table", summary="done", attempt_id=None, actor="w1"
    )
    key = result_key(order.id, deliverable.id)
    finished = await store.queue.finish_run(
        order.id,
        "w1",
        Status.AWAITING_REVIEW,
        reason="deliverable submitted",
        outbox=[OutboxItem("result", key, {"content": "the table", "summary": "done"})],
    )
    assert finished is not None
    fake_slack.fail_next("chat.postMessage", 500, processed=True, times=6)
    deliverer = _deliverer(store, _client(fake_slack))

    async def all_sent() -> bool:
        await deliverer.deliver_due()
        return all(m.sent_at is not None for m in await store.outbox.outbox(order.id or ""))

    await eventually(all_sent, timeout_s=60, interval_s=0.02)
    assert len(_in_thread(fake_slack, key)) == 1
    assert len(_in_thread(fake_slack, review_key(key))) == 1
    assert len(_in_thread(fake_slack, status_key(order.id))) == 1


# ------------------------------------------------------------ 4. uncertain uploads


async def test_a_lost_answer_to_an_upload_does_not_upload_the_deliverable_twice(
    store: Store, fake_slack: FakeSlack, settings_factory: Any
) -> None:
    settings = settings_factory()
    order = await _order(store)
    assert order.id
    await queue.enqueue(store, settings, order.id, actor="U1")
    await queue.claim(store, settings, "w1")
    long = "# Report\n" + "x" * 20_000  # too long to post inline: uploaded as a file
    deliverable = await store.runs.save_deliverable(
        order.id, tool_use_id="t1", content=long, summary="done", attempt_id=None, actor="w1"
    )
    key = result_key(order.id, deliverable.id)
    await store.queue.finish_run(
        order.id,
        "w1",
        Status.AWAITING_REVIEW,
        reason="deliverable submitted",
        outbox=[OutboxItem("result", key, {"content": long, "summary": "done"})],
    )
    fake_slack.fail_next("canvases.create", 200, error="canvas_disabled_user_team")  # a file
    fake_slack.fail_next("files.completeUploadExternal", 500, processed=True)
    deliverer = _deliverer(store, _client(fake_slack))

    async def all_sent() -> bool:
        await deliverer.deliver_due()
        rows: list[OutboxMessage] = await store.outbox.outbox(order.id or "")
        return all(m.sent_at is not None for m in rows)

    await eventually(all_sent, timeout_s=30, interval_s=0.02)
    assert _files_in_thread(fake_slack) == [f"{order.id}-deliverable-{deliverable.id}.md"]
    assert len(fake_slack.calls_to("files.completeUploadExternal")) == 1


async def test_a_status_rewritten_while_it_is_being_sent_goes_out_again(store: Store) -> None:
    """The deliverer is sending "one" when the run reports "two": marking "one" sent must not
    mark "two" sent with it; "two" is due again as soon as the first send has finished."""
    order = await _order(store)
    assert order.id
    await queue.enqueue(store, Settings(), order.id, actor="U1")
    assert await store.outbox.report_status(order.id, "one")
    [claimed] = [m for m in await store.outbox.claim_outbox("deliverer-a") if m.kind == "status"]
    assert claimed.payload["step"] == "one"
    assert await store.outbox.report_status(order.id, "two")  # while "one" is in flight
    assert [m for m in await store.outbox.claim_outbox("deliverer-b") if m.kind == "status"] == []
    assert claimed.id is not None
    await store.outbox.outbox_sent(claimed.id, "deliverer-a")
    [again] = [m for m in await store.outbox.claim_outbox("deliverer-b") if m.kind == "status"]
    assert again.id == claimed.id and again.payload["step"] == "two"
    await store.outbox.outbox_sent(again.id, "deliverer-b")
    assert await store.outbox.undelivered() == []
