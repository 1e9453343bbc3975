"""Work orders as things Slack can show: an order link unfurls (a Work Object task entity, with a
compact card for workspaces without them), only its id and state outside its own channel; a
typed `WO-42` is answered privately; the link itself leads to the order's thread."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from bot.server import build_web_app, start_site
from bot.slack_client import make_slack_client
from bot.unfurls import OrderLinks, only_order_refs, order_numbers
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.slack import FakeSlack
from tests.support.bot import RunningBot, running_bot
from tests.support.factories import make_order
from tests.support.waiting import bot_idle, eventually
from workers.store import Store
from workers.workorder import Status, Verification

pytestmark = pytest.mark.front_door  # SQLite only: tests/support/databases.py

BASE = "https://delegate.example.com/orders/"


@pytest.fixture
async def bot(
    store: Store, fake_slack: FakeSlack, settings_factory: Callable[..., Any]
) -> AsyncIterator[RunningBot]:
    settings = settings_factory(admins=["UADMIN"], slack={"order_links": BASE})
    async with running_bot(settings, store=store, fake_slack=fake_slack) as running:
        yield running


async def _order(store: Store, **overrides: Any) -> str:
    overrides.setdefault("status", Status.AWAITING_REVIEW)
    order = make_order(
        title="Churn numbers | one-pager <!channel>",
        verification=Verification(automatic_checks=False, reviewers=["U7"]),
        **overrides,
    )
    created = await store.orders.create_order(order, actor="U1")
    assert created.id is not None
    return created.id


def _text(blocks: list[dict[str, Any]]) -> str:
    return json.dumps(blocks)


async def test_an_order_link_unfurls_as_a_task_entity_with_a_card_beside_it(
    bot: RunningBot, fake_slack: FakeSlack
) -> None:
    order_id = await _order(bot.store)
    link = f"{BASE}{order_id}"
    status, _ = await bot.sender.event(bot.sender.link_shared(link, channel="C1"))
    assert status == 200
    await eventually(lambda: fake_slack.unfurls)
    [call] = fake_slack.unfurls
    assert "unfurl_id" in call and call["source"] == "conversations_history"
    card = call["unfurls"][link]["blocks"]
    shown = _text(card)
    assert order_id in shown and "Churn numbers" in shown
    assert "Awaiting review" in shown and "spent $0.00 of $2.00" in shown
    assert "<@U7>" in shown  # the reviewer
    assert "<!channel>" not in shown  # the title is shown inert
    [entity] = call["metadata"]["entities"]
    assert entity["entity_type"] == "slack#/entities/task"
    assert entity["app_unfurl_url"] == link
    assert entity["external_ref"] == {"id": order_id, "type": "work_order"}
    assert entity["url"] == "https://test.slack.com/archives/C1/p1700000000000100"
    payload = entity["entity_payload"]
    assert payload["fields"]["status"]["value"] == "Awaiting review"
    assert {f["key"]: f.get("value") for f in payload["custom_fields"]}["spend"] == "$0.00 of $2.00"


async def test_without_work_objects_the_card_alone_is_unfurled(
    bot: RunningBot, fake_slack: FakeSlack
) -> None:
    fake_slack.work_objects = False
    order_id = await _order(bot.store)
    link = f"{BASE}{order_id}?from=email"
    await bot.sender.event(bot.sender.link_shared(link, channel="C1"))
    await eventually(lambda: fake_slack.unfurls)
    [call] = fake_slack.unfurls
    assert "metadata" not in call
    assert order_id in _text(call["unfurls"][link]["blocks"])


async def test_outside_its_channel_an_unfurl_says_only_the_id_and_state(
    bot: RunningBot, fake_slack: FakeSlack
) -> None:
    order_id = await _order(bot.store)
    link = f"{BASE}{order_id}"
    await bot.sender.event(bot.sender.link_shared(link, channel="CPUBLIC", composer=True))
    await eventually(lambda: fake_slack.unfurls)
    [call] = fake_slack.unfurls
    assert call["source"] == "composer"  # still in the composer: answered by unfurl_id
    shown = _text(call["unfurls"][link]["blocks"])
    assert order_id in shown and "Awaiting review" in shown
    assert "Churn" not in shown and "U7" not in shown and "$" not in shown
    assert "metadata" not in call  # no entity: it would carry the title


async def test_links_that_are_not_orders_are_left_alone(
    bot: RunningBot, fake_slack: FakeSlack
) -> None:
    await _order(bot.store)
    event = bot.sender.link_shared(
        f"{BASE}WO-999", f"{BASE}../admin", "https://delegate.example.com/other/WO-1"
    )
    status, _ = await bot.sender.event(event)
    assert status == 200
    await bot_idle()
    assert fake_slack.unfurls == []
    assert not fake_slack.problems


async def test_a_typed_order_id_is_answered_privately_to_whoever_may_see_it(
    bot: RunningBot, fake_slack: FakeSlack
) -> None:
    order_id = await _order(bot.store, status=Status.RUNNING)
    elsewhere = bot.sender.direct_message(f"did {order_id} finish?", user="U7", channel="COTHER")
    elsewhere["channel_type"] = "channel"
    await bot.sender.event(elsewhere)
    await eventually(lambda: fake_slack.ephemerals)
    [card] = fake_slack.ephemerals
    assert card["recipient"] == "U7" and card["channel"] == "COTHER"
    assert order_id in _text(card["blocks"]) and "Running" in _text(card["blocks"])
    # Someone not on the order, in another channel, is shown nothing; nothing is posted.
    stranger = bot.sender.direct_message(f"what is {order_id}?", user="U5", channel="COTHER")
    stranger["channel_type"] = "channel"
    await bot.sender.event(stranger)
    await bot_idle()
    assert len(fake_slack.ephemerals) == 1
    assert not [c for c in fake_slack.calls if c.method == "chat.postMessage"]


async def test_asking_delegate_for_an_order_shows_it_rather_than_starting_an_intake(
    bot: RunningBot, fake_slack: FakeSlack, fake_anthropic: FakeAnthropic
) -> None:
    order_id = await _order(bot.store)
    await bot.sender.event(bot.sender.app_mention(f"<@UBOT> {order_id}?", user="U5"))
    await eventually(lambda: fake_slack.ephemerals)
    assert fake_slack.ephemerals[0]["recipient"] == "U5"  # in the order's own channel
    assert fake_anthropic.requests == []  # no model was asked to draft anything
    assert len(await bot.store.orders.list_orders()) == 1


async def test_an_order_link_leads_to_its_thread(
    store: Store, fake_slack: FakeSlack, settings_factory: Callable[..., Any]
) -> None:
    settings = settings_factory(slack_api_url=fake_slack.api_url, slack={"order_links": BASE})
    links = OrderLinks(settings, store=store, client=make_slack_client(settings))
    order_id = await _order(store)
    runner = await start_site(
        build_web_app(store=store, bolt=None, order_thread=links.thread_of),
        host="127.0.0.1",
        port=0,
    )
    host, port = runner.addresses[0][:2]
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(
                f"http://{host}:{port}/orders/{order_id}", allow_redirects=False
            ) as found:
                assert found.status == 302
                assert found.headers["Location"] == (
                    "https://test.slack.com/archives/C1/p1700000000000100"
                )
            async with http.get(f"http://{host}:{port}/orders/WO-404") as missing:
                assert missing.status == 404
            async with http.get(f"http://{host}:{port}/orders/..%2Fmetrics") as odd:
                assert odd.status == 404
    finally:
        await runner.cleanup()


def test_order_references_in_text() -> None:
    assert order_numbers("WO-7 and WO-12, then WO-7 again; not XWO-3 or WO-4a") == [7, 12]
    assert order_numbers("WO-1 WO-2 WO-3 WO-4") == [1, 2, 3]  # at most three cards
    assert only_order_refs("WO-42?") and only_order_refs("WO-1, WO-2")
    assert not only_order_refs("please redo WO-42") and not only_order_refs("hello")
