"""The leads' weekly digest: its words and blocks, its chart, its schedule and exactly-once posting."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import select, update

from bot.blocks import FIELD_TEXT_MAX, HEADER_TEXT_MAX, MESSAGE_BLOCKS_MAX, SECTION_TEXT_MAX
from bot.digest_blocks import digest_blocks
from bot.digest_post import SlackDigestPublisher
from tests.support.cli import delegate
from tests.support.history import W47, history_settings, seed_history
from workers.chart import render_chart
from workers.config import load_settings
from workers.digest import (
    DigestScheduler,
    build_digest,
    digest_json,
    due_week,
    headlines,
    render_markdown,
)
from workers.models import DigestPost, Installation, MetricDay
from workers.store.reporting import Reporting
from workers.store.reporting.metrics import Period, WeekPoint

REPO = Path(__file__).resolve().parents[1]
BERLIN_MONDAY_9 = {"channel": "C0LEADS", "cron": "0 9 * * mon", "timezone": "Europe/Berlin"}
EVERY_MINUTE = {"channel": "C0LEADS", "cron": "* * * * *", "timezone": "UTC"}


def assert_within_slack_limits(blocks: list[dict[str, Any]]) -> None:
    assert 0 < len(blocks) <= MESSAGE_BLOCKS_MAX
    for block in blocks:
        if block["type"] == "header":
            assert len(block["text"]["text"]) <= HEADER_TEXT_MAX
        elif block["type"] == "section":
            if "text" in block:
                assert 0 < len(block["text"]["text"]) <= SECTION_TEXT_MAX
            for item in block.get("fields", []):
                assert 0 < len(item["text"]) <= FIELD_TEXT_MAX
            assert len(block.get("fields", [])) <= 10
        elif block["type"] == "context":
            assert 0 < len(block["elements"]) <= 10
            assert all(len(e["text"]) <= SECTION_TEXT_MAX for e in block["elements"])
        else:
            raise AssertionError(f"unexpected block {block['type']}")
    assert len(json.dumps(blocks)) < 40_000


LONG_AGO = datetime(2026, 1, 1, tzinfo=UTC)


async def installed_on(engine: Any, when: datetime) -> None:
    """Pretend Delegate was installed at `when` (a fresh test database was installed just now)."""
    async with engine.begin() as conn:
        await conn.execute(update(Installation).values(installed_at=when))


def digest_settings(**digest: Any) -> Any:
    return load_settings(
        teams={
            "default": {"weekly_usd": 100.0},
            "growth": {"weekly_usd": 100.0, "members": ["U1", "U2"]},
        },
        digests=[{**BERLIN_MONDAY_9, "teams": ["growth"], **digest}],
    )


async def test_a_busy_week_and_an_empty_one_read_well_and_fit_slack(database: Any) -> None:
    engine = database.engine()
    try:
        await seed_history(engine)
        busy = await build_digest(Reporting(engine), history_settings(), "growth", W47)
        empty = await build_digest(
            Reporting(engine), history_settings(), "growth", Period.iso_week("2026-W30")
        )
    finally:
        await engine.dispose()

    words = headlines(busy)
    assert words[0].startswith("*2 finished outcomes* (+1 on last week), at *$1.43 each*")
    assert "-$0.08 on last week" in words[0]
    assert "$0.40 went to work that was not approved" in words[1]
    # One dialogue is still under way: the parts add up to the requests.
    assert words[2] == (
        "6 requests: 3 delegations, 2 chat answers and 1 still in dialogue "
        "(60 % of those settled delegated)."
    )
    assert "Needs a look: 1 exception (budget 1), 1 rejection, 1 cancellation." in words
    assert_within_slack_limits(digest_blocks(busy))
    blocks_text = json.dumps(digest_blocks(busy))
    assert "U1 (1 finished)" in blocks_text and "<@" not in blocks_text
    assert [p.week for p in busy.series][-1] == "2026-W47" and len(busy.series) == 8

    assert empty.current.is_empty
    assert headlines(empty)[0].startswith("A quiet week")
    blocks = digest_blocks(empty)
    assert_within_slack_limits(blocks)
    assert len(blocks) <= 4
    assert "# Weekly digest for team growth, 2026-W30" in render_markdown(empty)
    assert digest_json(empty)["cost_per_finished_outcome_usd"] is None


def test_blocks_stay_within_limits_however_many_exceptions() -> None:
    from workers.digest import Digest
    from workers.store.reporting.metrics import Comparison, PersonCount, TeamMetrics

    week = Period.iso_week("2026-W47")
    now = TeamMetrics(
        "x" * 400,
        week,
        requests_received=10**9,
        finished_outcomes=10**6,
        spend_micro_usd=10**15,
        exceptions={f"kind-{i}-" + "y" * 200: i + 1 for i in range(300)},
        top_requesters=[PersonCount(f"U{i:05d}" + "Z" * 500, i, i) for i in range(5)],
        top_reviewers=[PersonCount("<!channel>", 3)],
        spend_by_role={"r" * 3000: 5},
    )
    digest = Digest(now.team, Comparison(now, TeamMetrics(now.team, week.previous())))
    blocks = digest_blocks(digest)
    assert_within_slack_limits(blocks)
    assert "<!channel>" not in json.dumps(blocks)


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
async def test_the_posted_digest_names_people_without_pinging_and_shows_where_money_went(
    database: Any, fake_slack: Any
) -> None:
    engine = database.engine()
    client = AsyncWebClient(token="xoxb-test", base_url=fake_slack.api_url)
    fake_slack.users["UREV2"] = None  # Slack will not describe this one: shown by id
    try:
        await seed_history(engine)
        busy = await build_digest(Reporting(engine), history_settings(), "growth", W47)
        await SlackDigestPublisher(client).publish("C0LEADS", busy, None)
    finally:
        await engine.dispose()

    [message] = fake_slack.calls_to("chat.postMessage")
    text = json.dumps(message.args["blocks"], ensure_ascii=False)
    assert "<@" not in text, "naming the top people must not notify them"
    assert "Top requesters: u1 (1 finished), u2 (1 finished)" in text
    assert "Top reviewers: urev1 (3 decisions, 1 approved), UREV2 (1 decision, 1 approved)" in text
    assert "Spend by workload class: deep $2.00, standard $0.75, quick $0.10" in text
    assert (
        "Spend by route (role x class -&gt; model): execute x deep -&gt; opus $2.00, "
        "execute x standard -&gt; sonnet $0.70, execute x quick -&gt; haiku $0.10, "
        "verify x standard -&gt; mini $0.05"
    ) in text
    assert "Time waiting in the queue (total / median)*\\n1.8 h / 25 min" in text
    footer = message.args["blocks"][-1]["elements"][0]["text"]
    assert "delegate digest" not in footer and "`" not in footer
    assert "Home tab" in footer


def test_chart_labels_weeks_with_their_year_and_bars_with_their_values() -> None:
    from workers.chart import draw_chart

    series = [WeekPoint("2025-W52", 3, 4_500_000), WeekPoint("2026-W01", 0, 0)]
    series += [WeekPoint(f"2026-W{i:02d}", i, 1_000_000 * i) for i in range(2, 8)]
    figure = draw_chart(series, "Weekly digest for team growth, 2026-W07")
    bars = figure.axes[0]
    assert [t.get_text() for t in bars.get_xticklabels()] == [p.week for p in series]
    assert [t.get_text() for t in bars.texts] == ["3", "0", "2", "3", "4", "5", "6", "7"]
    cost_labels = [t.get_text() for t in figure.axes[1].texts]
    assert cost_labels[0] == "$1.50" and len(cost_labels) == 7  # no cost when nothing finished


def test_chart_is_a_real_png() -> None:
    series = [WeekPoint(f"2026-W{40 + i}", i % 3, 1_500_000 * i) for i in range(8)]
    for points in (series, [WeekPoint("2026-W47", 0, 0)] * 8):
        png = render_chart(points, "Weekly digest for team growth, 2026-W47")
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        image = Image.open(io.BytesIO(png))
        image.verify()
        assert image.size[0] > 400 and image.size[1] > 200


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_the_schedule_keeps_local_time_across_daylight_saving() -> None:
    schedule = digest_settings().digests[0]
    # Berlin moves to summer time on Sunday 2026-03-29: 09:00 is 08:00 UTC before, 07:00 after.
    assert due_week(schedule, datetime(2026, 3, 23, 7, 59, tzinfo=UTC)) is None
    assert due_week(schedule, datetime(2026, 3, 23, 8, 0, tzinfo=UTC)) == Period.iso_week(
        "2026-W12", "Europe/Berlin"
    )
    assert due_week(schedule, datetime(2026, 3, 30, 6, 59, tzinfo=UTC)) is None
    week = due_week(schedule, datetime(2026, 3, 30, 7, 0, tzinfo=UTC))
    assert week is not None and week.label == "2026-W13"
    assert (week.end - week.start).total_seconds() == 167 * 3600


async def test_digest_posts_at_local_nine_across_daylight_saving_exactly_once(
    database: Any, fake_slack: Any
) -> None:
    clock = Clock(datetime(2026, 3, 23, 7, 59, tzinfo=UTC))
    engine = database.engine()
    await installed_on(engine, LONG_AGO)
    client = AsyncWebClient(token="xoxb-test", base_url=fake_slack.api_url)
    scheduler = DigestScheduler(
        digest_settings(post_empty=True),
        Reporting(engine),
        SlackDigestPublisher(client),
        clock=clock,
        render_chart=render_chart,
    )
    try:
        assert await scheduler.sweep() == []  # 08:59 in Berlin
        clock.now = datetime(2026, 3, 23, 8, 0, tzinfo=UTC)  # 09:00 CET
        posted = await scheduler.sweep()
        assert [(c.team, c.channel, c.week) for c in posted] == [("growth", "C0LEADS", "2026-W12")]
        clock.now = datetime(2026, 3, 23, 8, 1, tzinfo=UTC)
        assert await scheduler.sweep() == []
        clock.now = datetime(2026, 3, 30, 6, 59, tzinfo=UTC)  # 08:59 CEST
        assert await scheduler.sweep() == []
        clock.now = datetime(2026, 3, 30, 7, 0, tzinfo=UTC)  # 09:00 CEST
        assert [c.week for c in await scheduler.sweep()] == ["2026-W13"]
    finally:
        await engine.dispose()

    messages = fake_slack.calls_to("chat.postMessage")
    assert len(messages) == 2
    assert all(m.args["channel"] == "C0LEADS" for m in messages)
    assert "A quiet week" in json.dumps(messages[0].args["blocks"])
    uploads = [f for f in fake_slack.files.values() if f["content"]]
    assert len(uploads) == 2
    assert all(f["content"].startswith(b"\x89PNG") for f in uploads)


async def test_a_missed_digest_is_caught_up_once_after_restart(
    database: Any, fake_slack: Any
) -> None:
    engine = database.engine()
    client = AsyncWebClient(token="xoxb-test", base_url=fake_slack.api_url)
    # Down over Monday morning; back on Wednesday.
    wednesday = Clock(datetime(2026, 3, 25, 12, 0, tzinfo=UTC))
    settings = digest_settings(post_empty=True)
    try:
        await installed_on(engine, LONG_AGO)
        first = DigestScheduler(
            settings, Reporting(engine), SlackDigestPublisher(client), clock=wednesday
        )
        assert [c.week for c in await first.sweep()] == ["2026-W12"]
        restarted = DigestScheduler(
            settings, Reporting(engine), SlackDigestPublisher(client), clock=wednesday
        )
        assert await restarted.sweep() == []
        wednesday.now = datetime(2026, 3, 29, 21, 0, tzinfo=UTC)  # still the same week
        assert await restarted.sweep() == []
    finally:
        await engine.dispose()
    assert len(fake_slack.calls_to("chat.postMessage")) == 1


async def test_a_failed_post_is_retried_by_the_next_sweep(database: Any, fake_slack: Any) -> None:
    engine = database.engine()
    client = AsyncWebClient(token="xoxb-test", base_url=fake_slack.api_url)
    monday = Clock(datetime(2026, 3, 23, 9, 0, tzinfo=UTC))
    scheduler = DigestScheduler(
        digest_settings(post_empty=True), Reporting(engine), SlackDigestPublisher(client), clock=monday
    )
    try:
        await installed_on(engine, LONG_AGO)
        fake_slack.fail_next("chat.postMessage", 200, error="channel_not_found")
        assert await scheduler.sweep() == []
        assert [c.week for c in await scheduler.sweep()] == ["2026-W12"]
    finally:
        await engine.dispose()
    assert len([c for c in fake_slack.calls_to("chat.postMessage") if c.response.get("ok")]) == 1


async def test_concurrent_schedulers_on_one_database_post_once(
    database: Any, fake_slack: Any
) -> None:
    engines = [database.engine() for _ in range(3)]
    client = AsyncWebClient(token="xoxb-test", base_url=fake_slack.api_url)
    monday = Clock(datetime(2026, 3, 23, 9, 0, tzinfo=UTC))
    settings = digest_settings(teams=["growth", "default", "all"], post_empty=True)
    await installed_on(engines[0], LONG_AGO)
    schedulers = [
        DigestScheduler(settings, Reporting(e), SlackDigestPublisher(client), clock=monday, owner=f"p{i}")
        for i, e in enumerate(engines)
    ]
    try:
        results = await asyncio.gather(*(s.sweep() for s in schedulers))
    finally:
        for e in engines:
            await e.dispose()
    posted = sorted((c.team, c.week) for r in results for c in r)
    assert posted == [("all", "2026-W12"), ("default", "2026-W12"), ("growth", "2026-W12")]
    assert len(fake_slack.calls_to("chat.postMessage")) == 3


async def test_a_fresh_install_posts_nothing_about_the_weeks_before_it(
    database: Any, fake_slack: Any
) -> None:
    engine = database.engine()
    client = AsyncWebClient(token="xoxb-test", base_url=fake_slack.api_url)
    installed = datetime(2026, 3, 25, 12, 0, tzinfo=UTC)  # a Wednesday of 2026-W13
    clock = Clock(installed)
    settings = load_settings(digests=[EVERY_MINUTE | {"post_empty": True}])
    scheduler = DigestScheduler(
        settings, Reporting(engine), SlackDigestPublisher(client), clock=clock
    )
    try:
        await installed_on(engine, installed)
        assert await scheduler.sweep() == [], "2026-W12 ended before Delegate was installed"
        clock.now = datetime(2026, 3, 30, 9, 0, tzinfo=UTC)
        assert [c.week for c in await scheduler.sweep()] == ["2026-W13"]
    finally:
        await engine.dispose()
    assert len(fake_slack.calls_to("chat.postMessage")) == 1


async def test_an_empty_week_is_not_posted_unless_asked_for(database: Any, fake_slack: Any) -> None:
    engine = database.engine()
    client = AsyncWebClient(token="xoxb-test", base_url=fake_slack.api_url)
    monday = Clock(datetime(2026, 11, 23, 9, 0, tzinfo=UTC))
    quiet = DigestScheduler(
        load_settings(teams=history_settings().teams, digests=[EVERY_MINUTE]),
        Reporting(engine),
        SlackDigestPublisher(client),
        clock=monday,
    )
    try:
        await seed_history(engine)  # data from 2026-W46 to 2026-W47
        assert [c.week for c in await quiet.sweep()] == ["2026-W47", "2026-W47"]  # both teams
        monday.now = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
        assert await quiet.sweep() == [], "2026-W48 had nothing in it"
        assert await quiet.sweep() == []
        # Asked for by name, an empty week is posted, once.
        assert await quiet.post("growth", "C0LEADS", Period.iso_week("2026-W48")) is not None
        assert await quiet.post("growth", "C0LEADS", Period.iso_week("2026-W48")) is None
        async with engine.connect() as conn:
            ledger = (
                await conn.execute(
                    select(DigestPost.team, DigestPost.week, DigestPost.state).order_by(
                        DigestPost.week, DigestPost.team
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    assert ledger == [
        ("default", "2026-W47", "posted"),
        ("growth", "2026-W47", "posted"),
        ("default", "2026-W48", "skipped"),
        ("growth", "2026-W48", "posted"),
    ]
    posted = [json.dumps(c.args["blocks"]) for c in fake_slack.calls_to("chat.postMessage")]
    assert len(posted) == 3 and "A quiet week" in posted[2]
    assert not any("A quiet week" in text for text in posted[:2])


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
async def test_a_week_posted_by_hand_is_not_posted_again_by_the_schedule(
    database: Any, fake_slack: Any, tmp_path: Path
) -> None:
    engine = database.engine()
    try:
        await installed_on(engine, LONG_AGO)
    finally:
        await engine.dispose()
    env = _cli_env(
        database,
        tmp_path,
        fake_slack.api_url,
        digests=[EVERY_MINUTE | {"teams": ["growth"], "post_empty": True}],
    )
    code, _, err = await _delegate("digest", "--team", "growth", "--post", env=env)
    assert code == 0, err
    assert "posted growth " in err
    code, out, err = await _delegate("digest", "--due", env=env)
    assert (code, out.strip()) == (0, "nothing due"), err
    code, _, err = await _delegate("digest", "--team", "growth", "--post", env=env)
    assert code == 0 and "already posted in C0LEADS" in err and "not posting it again" in err
    assert len(fake_slack.calls_to("chat.postMessage")) == 1

    # A post Slack refuses is an error, and leaves the week unposted for a later attempt.
    fake_slack.fail_next("chat.postMessage", 200, error="channel_not_found")
    again = ("digest", "--team", "growth", "--week", "2026-W03", "--post")
    code, _, err = await _delegate(*again, env=env)
    assert code == 1 and "Slack refused the post in C0LEADS: channel_not_found" in err
    assert "Traceback" not in err
    code, _, err = await _delegate(*again, env=env)
    assert code == 0 and "posted growth 2026-W03 in C0LEADS" in err


def _cli_env(
    database: Any, tmp_path: Path, slack_url: str | None = None, **config: Any
) -> dict[str, str]:
    path = tmp_path / "delegate.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "teams": {
                    "default": {"weekly_usd": 100.0},
                    "growth": {"weekly_usd": 100.0, "members": ["U1", "U2"]},
                },
                **config,
            }
        )
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DELEGATE_", "SLACK_", "ANTHROPIC_", "OPENAI_", "DATABASE_URL"))
    }
    env |= {**database.env(), "DELEGATE_CONFIG": str(path), "PYTHONPATH": str(REPO)}
    if slack_url:
        env |= {"SLACK_BOT_TOKEN": "xoxb-test", "SLACK_API_URL": slack_url}
    return env


async def _delegate(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    return await delegate(*args, env=env, timeout=120)


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
async def test_cli_prints_json_and_exports_csv(database: Any, tmp_path: Path) -> None:
    engine = database.engine()
    try:
        await seed_history(engine)
    finally:
        await engine.dispose()
    env = _cli_env(database, tmp_path)

    code, out, err = await _delegate(
        "digest", "--team", "growth", "--week", "2026-W47", "--format", "json", env=env
    )
    assert code == 0, err
    data = json.loads(out)
    assert (data["team"], data["week"]) == ("growth", "2026-W47")
    assert (data["finished_outcomes"], data["delegations"], data["chat_answers"]) == (2, 3, 2)
    assert (data["requests_received"], data["requests_in_progress"]) == (6, 1)
    assert data["cost_per_finished_outcome_usd"] == 1.425
    assert data["total_spend_usd"] == 2.85
    assert data["rework_rate"] == 0.25
    assert data["exceptions"] == {"budget": 1}
    assert data["cycle_time_p50_s"] == 354_600.0
    assert data["previous"]["week"] == "2026-W46"
    assert data["previous"]["finished_outcomes"] == 1
    assert data["previous"]["cost_per_finished_outcome_usd"] == 1.5
    assert data["changes"]["finished_outcomes"] == 1
    assert data["top_reviewers"] == [
        {"user": "UREV1", "count": 3, "finished": 1},
        {"user": "UREV2", "count": 1, "finished": 1},
    ]
    assert data["queue_wait_total_s"] == 6600.0 and data["queue_wait_p50_s"] == 1500.0

    code, out, err = await _delegate("digest", "--team", "growth", "--week", "2026-W47", env=env)
    assert code == 0, err
    for section in (
        "## Spend by workload class\n\n- deep: $2.00\n- standard: $0.75\n- quick: $0.10\n",
        "## Spend by role\n\n- execute: $2.80\n- verify: $0.05\n",
        "## Spend by route (role x class -> model)\n\n- execute x deep -> opus: $2.00 (1 call)",
        "## Exceptions by kind\n\n- budget: 1\n",
        "- UREV1: 3 decisions, 1 approved\n",
        "| Time waiting in the queue (total / median) | 1.8 h / 25 min |",
    ):
        assert section in out, section

    code, out, err = await _delegate(
        "digest", "--team", "growth", "--week", "2026-W47", "--format", "csv", "--weeks", "3",
        env=env,
    )  # fmt: skip
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["week"] for r in rows] == ["2026-W45", "2026-W46", "2026-W47"]
    assert [r["finished_outcomes"] for r in rows] == ["0", "1", "2"]
    assert rows[0]["cost_per_finished_outcome_usd"] == ""
    assert rows[2]["total_spend_usd"] == "2.85"
    assert [r["spend_usd:class=deep"] for r in rows] == ["0", "1.0", "2.0"]
    assert rows[2]["spend_usd:role=verify"] == "0.05"
    assert rows[2]["spend_usd:route=execute/standard/sonnet"] == "0.7"
    assert [r["exceptions:kind=budget"] for r in rows] == ["0", "0", "1"]

    code, out, err = await _delegate("digest", "--team", "nobody", env=env)
    assert code == 2 and "--team must be one of: all, default, growth" in err


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_two_scheduler_processes_on_postgres_post_one_digest(
    database: Any, fake_slack: Any, tmp_path: Path
) -> None:
    # Every minute, so the digest for last week is due whenever the test runs.
    env = _cli_env(
        database,
        tmp_path,
        fake_slack.api_url,
        digests=[EVERY_MINUTE | {"teams": ["default"], "post_empty": True}],
    )
    engine = database.engine()
    try:
        await installed_on(engine, LONG_AGO)
    finally:
        await engine.dispose()
    results = await asyncio.gather(
        _delegate("digest", "--due", env=env), _delegate("digest", "--due", env=env)
    )
    for code, _, err in results:
        assert code == 0, err
    outputs = sorted(out for _, out, _ in results)
    assert outputs[0].strip() == "nothing due"
    assert outputs[1].startswith("posted default ")
    assert len(fake_slack.calls_to("chat.postMessage")) == 1


async def test_digest_due_summarises_the_closed_days_first(
    database: Any, fake_slack: Any, tmp_path: Path
) -> None:
    """A crontab running only `delegate digest --due` keeps the history quick to read."""
    engine = database.engine()
    try:
        await seed_history(engine)
        env = _cli_env(
            database,
            tmp_path,
            fake_slack.api_url,
            # Whatever week is last when the test runs, it is after the seeded history.
            digests=[EVERY_MINUTE | {"teams": ["growth"], "post_empty": True}],
        )
        code, out, err = await _delegate("digest", "--due", env=env)
        async with engine.connect() as conn:
            days = set((await conn.execute(select(MetricDay.day))).scalars())
    finally:
        await engine.dispose()
    assert code == 0, err
    assert out.startswith("posted growth ")
    assert {date(2026, 11, d).isoformat() for d in range(10, 27)} <= days


def test_a_digest_for_an_unknown_team_is_a_configuration_error() -> None:
    from workers.errors import ConfigError

    with pytest.raises(ConfigError, match=r"digests\[0\]\.teams: 'nope' is not a team"):
        load_settings(digests=[{"channel": "C1", "teams": ["all", "nope"]}])
