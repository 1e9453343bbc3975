"""App Home for each role: a requester's orders, a reviewer's decisions (made right there, under
the thread's rules), a lead's week and chart; republished when a shown order changes, coalesced."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import update

from bot.app import create_app
from bot.delivery import Deliverer
from bot.home import HomePublisher
from bot.home_refresh import HomeRefresher
from bot.ids import APPROVE_ACTION, CHANGES_ACTION, CHANGES_CALLBACK, REJECT_ACTION
from bot.reporter import SlackReporter
from bot.server import build_web_app, start_site
from bot.slack_client import make_slack_client
from tests.fakes.anthropic import FakeAnthropic, Reply
from tests.fakes.openai import FakeOpenAI
from tests.fakes.openai import Reply as OpenAIReply
from tests.fakes.slack import VIEW_BLOCKS_MAX, FakeSlack, SlackSender
from tests.support.bot import RunningBot
from tests.support.factories import make_order
from tests.support.history import seed_history
from tests.support.pipeline import Pipeline
from tests.support.settings import FAST_ENGINE
from tests.support.waiting import bot_idle
from workers.config import Settings
from workers.models import WorkOrderRow
from workers.providers import ModelRouter
from workers.runtime import run_worker
from workers.store import Store
from workers.workorder import Status, Verification

pytestmark = pytest.mark.front_door  # SQLite only: tests/support/databases.py

THREAD_LINK = "https://test.slack.com/archives/C1/p1700000000000100"


# ----------------------------------------------------------------------------- harness


def quick_homes(publisher: HomePublisher) -> HomeRefresher:
    """Coalescing as in production, on a short interval so tests do not wait for it."""
    return HomeRefresher(publisher.refresh, interval_s=0.05, spacing_s=0.0)


@asynccontextmanager
async def bot_with_homes(
    settings: Settings, *, store: Store, fake_slack: FakeSlack
) -> AsyncIterator[tuple[RunningBot, HomeRefresher, SlackReporter]]:
    """The real bot behind its HTTP surface (as tests/support/bot.py), with a refresher shared
    by the app and a worker-side reporter, as `delegate run` wires them."""
    settings = settings.model_copy(update={"slack_api_url": fake_slack.api_url})
    client = make_slack_client(settings, backoff_factor_s=0.01)
    homes = quick_homes(HomePublisher(settings, store=store, client=client))
    router = ModelRouter.from_settings(settings, store)
    bolt = create_app(settings, store=store, client=client, completer=router, homes=homes)
    secret = settings.slack_signing_secret
    assert secret is not None
    runner: web.AppRunner = await start_site(
        build_web_app(store=store, bolt=bolt, signing_secret=secret.get_secret_value()),
        host="127.0.0.1",
        port=0,
    )
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}"
    bot = RunningBot(
        url=url,
        store=store,
        sender=SlackSender(url, secret.get_secret_value()),
        settings=settings,
    )
    try:
        yield bot, homes, SlackReporter(store=store, client=client, settings=settings, home=homes)
    finally:
        await homes.close()
        await runner.cleanup()
        await router.close()


async def open_home(bot: RunningBot, user: str) -> None:
    status, _ = await bot.sender.event(
        {"type": "app_home_opened", "user": user, "channel": "D1", "tab": "home", "event_ts": "1.2"}
    )
    assert status == 200


def home_of(fake_slack: FakeSlack, user: str) -> list[dict[str, Any]]:
    return [
        c.args["view"] for c in fake_slack.calls_to("views.publish") if c.args["user_id"] == user
    ]


def text_of(view: dict[str, Any]) -> str:
    return json.dumps(view["blocks"], ensure_ascii=False)


def home_click(bot: RunningBot, action_id: str, value: str, user: str) -> dict[str, Any]:
    """A button click in App Home, as Slack sends it: a view container, no channel or message."""
    payload = bot.sender.block_action(action_id, value, user_id=user)
    for key in ("channel", "message", "response_url"):
        payload.pop(key, None)
    payload["container"] = {"type": "view", "view_id": "VHOME"}
    payload["view"] = {
        "id": "VHOME",
        "type": "home",
        "blocks": [],
        "private_metadata": "",
        "callback_id": "",
        "state": {"values": {}},
        "hash": "1.a",
        "app_id": "A1",
        "bot_id": "BBOT",
    }
    return payload


async def seed_order(store: Store, **fields: Any) -> str:
    order = await store.orders.create_order(make_order(**fields), actor=fields.get("requester", "U1"))
    assert order.id
    return order.id


async def set_spend(store: Store, order_id: str, micro_usd: int) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(
            update(WorkOrderRow)
            .where(WorkOrderRow.id == int(order_id.split("-")[1]))  # type: ignore[arg-type]
            .values(spent_micro_usd=micro_usd)
        )


# ----------------------------------------------------------------------------- coalescing


async def test_refreshes_are_coalesced_per_person_and_spaced_on_a_controllable_clock() -> None:
    now = [1000.0]
    slept: list[float] = []
    published: list[tuple[str, float]] = []
    gate = asyncio.Event()

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await gate.wait()
        now[0] += seconds

    async def publish(user: str) -> None:
        published.append((user, now[0]))

    homes = HomeRefresher(publish, interval_s=5.0, spacing_s=0.5, clock=lambda: now[0], sleep=sleep)
    homes.request("U1")
    await homes.drain()
    assert published == [("U1", 1000.0)], "the first publish goes out at once"

    # Five changes within the interval: one publish, after the interval, with the latest state.
    for _ in range(5):
        homes.request("U1")
    homes.request("U2")
    gate.set()
    await homes.drain()
    assert [u for u, _ in published] == ["U1", "U1", "U2"]
    assert published[1][1] - published[0][1] == pytest.approx(5.0)
    assert slept[0] == pytest.approx(5.0), "U1 waits out its interval"
    # U2 never published before, but the global spacing puts it after U1's slot.
    assert published[2][1] >= published[1][1] + 0.5 - 1e-9

    async def failing(user: str) -> None:
        raise RuntimeError("Slack is down")

    broken = HomeRefresher(failing, clock=lambda: now[0], sleep=sleep)
    broken.request("U1")
    await broken.drain()  # logged, not raised: reporting must go on


# ----------------------------------------------------------------------------- requester


async def test_someone_who_never_delegated_is_shown_how_to_begin_until_they_have(
    store: Store, fake_slack: FakeSlack, settings_factory: Callable[..., Any]
) -> None:
    settings = settings_factory(
        admins=["UADMIN", "UOPS"], slack={"docs_url": "https://wiki.example.com/delegate"}
    )
    async with bot_with_homes(settings, store=store, fake_slack=fake_slack) as (bot, homes, _):
        await open_home(bot, "UNEW")
        await fake_slack.wait_until(lambda: bool(home_of(fake_slack, "UNEW")))
        await homes.drain()
        first = text_of(home_of(fake_slack, "UNEW")[-1])
        # What to ask, what happens, how approval works, who the admins are, where to read on.
        assert "Getting started" in first and "_@Delegate pull last quarter" in first
        assert "*Start*" in first and "How approval works" in first
        assert "<@UADMIN>, <@UOPS>" in first
        assert "<https://wiki.example.com/delegate|Read the guide>" in first
        assert "home_new_order" in first
        await seed_order(store, requester="UNEW", title="My first order")
        await open_home(bot, "UNEW")
        await fake_slack.wait_until(lambda: "My first order" in text_of(home_of(fake_slack, "UNEW")[-1]))
        await homes.drain()
    later = text_of(home_of(fake_slack, "UNEW")[-1])
    assert "Getting started" not in later


async def test_the_messages_tab_is_welcomed_once_per_person(
    store: Store, fake_slack: FakeSlack, settings_factory: Callable[..., Any]
) -> None:
    """Opening the app's DM (`tab: messages`, the agent experience's thread start) gets one
    welcome per person, however often it is opened, retried or delivered twice at once."""
    async with bot_with_homes(settings_factory(), store=store, fake_slack=fake_slack) as (bot, _, _):

        def opened(user: str, event_ts: str) -> dict[str, Any]:
            return {
                "type": "app_home_opened",
                "user": user,
                "channel": f"D-{user}",
                "tab": "messages",
                "event_ts": event_ts,
            }

        await asyncio.gather(*(bot.sender.event(opened("UNEW", f"1.{i}")) for i in range(3)))
        await bot.sender.event(opened("UNEW", "2.0"))
        await bot.sender.event(opened("UOTHER", "3.0"))
        await bot_idle()
    posts = fake_slack.calls_to("chat.postMessage")
    assert sorted(c.args["channel"] for c in posts) == ["D-UNEW", "D-UOTHER"]
    assert "Tell me here what you need done" in posts[0].args["text"]
    assert not fake_slack.calls_to("views.publish")  # the Messages tab is not the Home tab


async def test_requester_sees_open_and_recent_orders_with_state_spend_and_thread_link(
    store: Store, fake_slack: FakeSlack, settings_factory: Callable[..., Any]
) -> None:
    finished = [await seed_order(store, title=f"Old report {i}") for i in range(12)]
    for order_id in finished:
        await store.orders.transition(order_id, Status.CANCELLED, actor="U1", reason="not needed")
    running = await seed_order(
        store, title="Competitor *pricing* <table>", status=Status.AWAITING_CONFIRMATION
    )
    await store.orders.transition(running, Status.QUEUED, actor="U1", reason="confirmed")
    await set_spend(store, running, 420_000)
    await seed_order(store, requester="U2", title="Someone else's order")

    settings = settings_factory()
    async with bot_with_homes(settings, store=store, fake_slack=fake_slack) as (bot, homes, _):
        await open_home(bot, "U1")
        await fake_slack.wait_until(lambda: bool(home_of(fake_slack, "U1")))
        await homes.drain()
    [view] = home_of(fake_slack, "U1")
    blocks = view["blocks"]
    text = text_of(view)
    assert len(blocks) <= VIEW_BLOCKS_MAX and "home_new_order" in text
    lines = [b["elements"][0]["text"] for b in blocks if b["type"] == "context"]
    first = next(line for line in lines if running in line)
    # Open orders come first, with state, spend of budget and a link to the thread.
    assert lines.index(first) < min(i for i, line in enumerate(lines) if "Old report" in line)
    assert f"*<{THREAD_LINK}|{running}>*" in first and "Queued" in first
    assert "spent $0.42 of $2.00" in first
    assert "&lt;table&gt;" in first, "titles are escaped"
    assert "Cancelled" in text and "Someone else" not in text
    shown = sum(1 for line in lines if "Old report" in line)
    assert shown == 9 and "…and 3 more" in text, "ten listed, the rest counted"
    review_buttons = [b for b in blocks if b["type"] == "actions" and len(b["elements"]) == 3]
    assert not review_buttons, "a requester with nothing to review gets no review section"


# ----------------------------------------------------------------------------- reviewer


def verdicts(*passed: bool) -> OpenAIReply:
    return OpenAIReply.tool(
        "record_verdicts",
        {"verdicts": [{"index": i, "passed": p, "reason": "ok"} for i, p in enumerate(passed, 1)]},
    )


@pytest.fixture
async def pipe(
    store: Store,
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    settings_factory: Callable[..., Any],
) -> AsyncIterator[tuple[Pipeline, HomeRefresher]]:
    """tests/support/pipeline.py's pipeline, its worker reporting through the shared refresher."""
    settings = settings_factory(
        database_url=str(store.engine.url.render_as_string(hide_password=False)),
        engine=FAST_ENGINE,
    )
    async with bot_with_homes(settings, store=store, fake_slack=fake_slack) as (
        bot,
        homes,
        reporter,
    ):
        stop = asyncio.Event()
        worker = asyncio.create_task(
            run_worker(
                bot.settings,
                concurrency=2,
                store=store,
                stop=stop,
                handle_signals=False,
            )
        )
        # Results, review prompts and exceptions go out through the durable outbox.
        deliverer = Deliverer(store, reporter, poll_s=1.0, backoff_s=0.05).start(stop)
        try:
            yield Pipeline(bot, fake_slack, fake_anthropic, fake_openai), homes
        finally:
            stop.set()
            await asyncio.wait_for(worker, 20)
            await asyncio.wait_for(deliverer, 20)


async def test_reviewer_decides_from_app_home_and_an_outsider_is_refused(
    pipe: tuple[Pipeline, HomeRefresher], fake_slack: FakeSlack
) -> None:
    p, homes = pipe
    p.openai.script(verdicts(True, True, True))
    submit = Reply.tool("submit_deliverable", {"content": "| Acme | $10 |", "summary": "Done."})
    order_id = await p.order_started(submit)
    await open_home(p.bot, "U1")  # the requester watches it run
    await p.status_of(order_id, Status.AWAITING_REVIEW)
    await p.post(APPROVE_ACTION)  # the thread's review prompt is out before anyone decides
    # The requester's home followed the order into review without them reopening it.
    await fake_slack.wait_until(
        lambda: any("Awaiting review" in text_of(v) for v in home_of(fake_slack, "U1"))
    )
    requester_home = home_of(fake_slack, "U1")[-1]
    assert APPROVE_ACTION not in text_of(requester_home), "U7 reviews, not the requester"

    await open_home(p.bot, "U7")
    await fake_slack.wait_until(lambda: bool(home_of(fake_slack, "U7")))
    reviewer_home = home_of(fake_slack, "U7")[-1]
    buttons = {
        e["action_id"]: e["value"]
        for b in reviewer_home["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
    }
    shown = f"{order_id}:v1"  # bound to the deliverable shown, as the thread's buttons are
    assert buttons == {
        "home_new_order": "new",
        APPROVE_ACTION: shown,
        CHANGES_ACTION: shown,
        REJECT_ACTION: shown,
    }
    assert "Awaiting your review* (1)" in text_of(reviewer_home)

    # An outsider's click (a stale or forwarded home) is refused in their DM; nothing changes.
    before = len(fake_slack.calls_to("chat.postMessage"))
    status, _ = await p.bot.sender.action(home_click(p.bot, APPROVE_ACTION, shown, "U8"))
    assert status == 200
    await fake_slack.wait_until(
        lambda: any(
            c.args.get("channel") == "U8" for c in fake_slack.calls_to("chat.postMessage")[before:]
        )
    )
    refusal = [c for c in fake_slack.calls_to("chat.postMessage") if c.args["channel"] == "U8"]
    assert refusal[-1].args["text"] == f"Only the reviewer (<@U7>) can decide {order_id}."
    assert (await p.bot.store.orders.get_order(order_id)).status is Status.AWAITING_REVIEW

    # Request changes from Home opens the thread's modal.
    await p.bot.sender.action(home_click(p.bot, CHANGES_ACTION, shown, "U7"))
    [opened] = await fake_slack.wait_for("views.open")
    assert opened.args["view"]["callback_id"] == CHANGES_CALLBACK

    # The reviewer approves from Home: the thread's review message and status show it, and
    # their home no longer asks for a decision.
    await p.bot.sender.action(home_click(p.bot, APPROVE_ACTION, shown, "U7"))
    await p.status_of(order_id, Status.APPROVED)
    await p.update("Approved* by <@U7>")
    await p.update("Approved (by <@U7>)")
    await fake_slack.wait_until(
        lambda: APPROVE_ACTION not in text_of(home_of(fake_slack, "U7")[-1])
    )
    await homes.drain()
    trail = await p.bot.store.audit.audit_trail(order_id)
    assert (trail[-1].actor, trail[-1].data["to"]) == ("U7", "approved")


def home_buttons(view: dict[str, Any]) -> dict[str, str]:
    return {
        e["action_id"]: e["value"]
        for b in view["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
    }


async def test_a_home_published_before_a_rework_cannot_approve_the_new_version(
    pipe: tuple[Pipeline, HomeRefresher], fake_slack: FakeSlack
) -> None:
    """Issue 19, item 12: Home shows what is up for review and its buttons name that version."""
    p, _homes = pipe
    p.openai.script(verdicts(True, True, True), verdicts(True, True, True))
    first = Reply.tool("submit_deliverable", {"content": "v1", "summary": "First draft."})
    order_id = await p.order_started(first)
    await p.status_of(order_id, Status.AWAITING_REVIEW)
    await p.post(APPROVE_ACTION)
    await open_home(p.bot, "U7")
    await fake_slack.wait_until(
        lambda: any("First draft." in text_of(v) for v in home_of(fake_slack, "U7"))
    )
    old_home = [v for v in home_of(fake_slack, "U7") if "First draft." in text_of(v)][-1]
    assert "✅ Covers Acme, Globex and Initech" in text_of(old_home), "the verifier's verdicts"
    old = home_buttons(old_home)[APPROVE_ACTION]

    # The reviewer asks for changes in the thread; the rework is deliverable 2.
    await p.click(CHANGES_ACTION, order_id, "U7")
    [opened] = await fake_slack.wait_for("views.open")
    p.anthropic.script(
        Reply.tool("submit_deliverable", {"content": "v2", "summary": "Second draft."})
    )
    submitted = p.bot.sender.view_submission(
        CHANGES_CALLBACK,
        {"feedback": {"feedback": "Add annual prices."}},
        user_id="U7",
        private_metadata=opened.args["view"]["private_metadata"],
    )
    assert (await p.bot.sender.action(submitted))[0] == 200
    await fake_slack.wait_until(lambda: bool(p.posts_with("Second draft.")), within=20)
    await p.status_of(order_id, Status.AWAITING_REVIEW)

    # A click on the Home published before the rework does not approve version 2.
    before = len(fake_slack.calls_to("chat.postMessage"))
    await p.bot.sender.action(home_click(p.bot, APPROVE_ACTION, old, "U7"))
    await fake_slack.wait_until(
        lambda: any(
            "earlier version" in c.args.get("text", "")
            for c in fake_slack.calls_to("chat.postMessage")[before:]
        )
    )
    assert (await p.bot.store.orders.get_order(order_id)).status is Status.AWAITING_REVIEW

    # The Home published now shows version 2, with its own checks, and decides on it.
    await fake_slack.wait_until(lambda: "Second draft." in text_of(home_of(fake_slack, "U7")[-1]))
    current = home_of(fake_slack, "U7")[-1]
    assert "✅ Every price cites a source URL" in text_of(current)
    assert home_buttons(current)[APPROVE_ACTION] != old
    await p.bot.sender.action(
        home_click(p.bot, APPROVE_ACTION, home_buttons(current)[APPROVE_ACTION], "U7")
    )
    await p.status_of(order_id, Status.APPROVED)


# ----------------------------------------------------------------------------- lead


async def test_lead_sees_the_weeks_figures_and_the_chart_uploaded_once(
    store: Store, fake_slack: FakeSlack, settings_factory: Callable[..., Any]
) -> None:
    await seed_history(store.engine)
    async with store.engine.begin() as conn:  # the metrics seed leaves budgets out
        budget = make_order().budget.model_dump(mode="json")
        await conn.execute(update(WorkOrderRow).values(budget=budget))
    settings = settings_factory(
        slack_api_url=fake_slack.api_url,
        teams={
            "default": {"weekly_usd": 100.0},
            "growth": {"weekly_usd": 100.0, "members": ["U1", "U2"], "leads": ["ULEAD"]},
        },
    )
    client = make_slack_client(settings, backoff_factor_s=0.01)
    friday_of_w47 = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
    publisher = HomePublisher(settings, store=store, client=client, clock=lambda: friday_of_w47)
    await publisher.publish("ULEAD")
    await publisher.publish("ULEAD")
    first, second = home_of(fake_slack, "ULEAD")
    text = text_of(first)
    assert "This week for team growth" in text and "2026-W47 so far" in text
    assert "finished outcome" in text and "Cost per finished outcome" in text
    # A dialogue still under way is neither a delegation nor a chat answer: the figures add up.
    assert "6 requests: 3 delegations, 2 chat answers and 1 still in dialogue" in text
    assert "Delegations / chat answers / in dialogue*\\n3 / 2 / 1" in text
    [image] = [b for b in first["blocks"] if b["type"] == "image"]
    [uploaded] = fake_slack.calls_to("files.completeUploadExternal")
    file_id = uploaded.response["files"][0]["id"]
    assert image["slack_file"] == {"id": file_id}, "the chart is a Slack-hosted file"
    assert fake_slack.files[file_id]["content"].startswith(b"\x89PNG")
    assert "8 weeks to 2026-W46" in image["alt_text"]
    assert not uploaded.args.get("channel_id") and not uploaded.args.get("channels")
    assert [b for b in second["blocks"] if b["type"] == "image"] == [image], "uploaded once"

    # Someone who leads nothing sees no figures.
    await publisher.publish("U9")
    assert "This week for" not in text_of(home_of(fake_slack, "U9")[-1])

    # If Slack will not show the image, the home still goes out, without it.
    fake_slack.fail_next("views.publish", status=200, error="invalid_arguments")
    await publisher.publish("ULEAD")
    last = home_of(fake_slack, "ULEAD")[-1]
    assert "This week for team growth" in text_of(last)
    assert not [b for b in last["blocks"] if b["type"] == "image"]


async def test_a_busy_reviewer_and_requester_home_stays_within_slack_limits(
    store: Store, fake_slack: FakeSlack, settings_factory: Callable[..., Any]
) -> None:
    reviewing = Verification(reviewers=["U7"], automatic_checks=False)
    for i in range(14):
        await seed_order(
            store, title=f"Review me {i}", verification=reviewing, status=Status.AWAITING_REVIEW
        )
    for i in range(14):
        await seed_order(store, requester="U7", title="x" * 190 + str(i))
    settings = settings_factory(
        slack_api_url=fake_slack.api_url,
        teams={f"team{i}": {"weekly_usd": 10.0, "leads": ["U7"]} for i in range(7)},
    )
    client = make_slack_client(settings, backoff_factor_s=0.01)
    publisher = HomePublisher(
        settings, store=store, client=client, render_chart=lambda s, t: b"\x89PNG"
    )
    await publisher.publish("U7")
    [view] = home_of(fake_slack, "U7")
    text = text_of(view)
    assert len(view["blocks"]) <= VIEW_BLOCKS_MAX
    assert text.count(f'"action_id": "{APPROVE_ACTION}"') == 10
    assert "…and 4 more awaiting your review" in text and "…and 4 more" in text
    assert "…and 2 more teams" in text
