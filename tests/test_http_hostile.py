"""Hostile or malformed HTTP requests get a 4xx and no traceback; replayed commands and
interactions are ignored (security issue, item 5)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from tests.fakes.slack import FakeSlack
from tests.support.bot import RunningBot, running_bot
from tests.support.settings import SIGNING_SECRET
from workers.store import Store

pytestmark = pytest.mark.front_door  # SQLite only: tests/support/databases.py


@pytest.fixture
async def bot(
    store: Store, fake_slack: FakeSlack, settings_factory: Callable[..., Any]
) -> AsyncIterator[RunningBot]:
    async with running_bot(settings_factory(), store=store, fake_slack=fake_slack) as running:
        yield running


def _signed(body: bytes, ts: str) -> str:
    base = b"v0:" + ts.encode() + b":" + body
    return "v0=" + hmac.new(SIGNING_SECRET.encode(), base, hashlib.sha256).hexdigest()


async def _post(
    bot: RunningBot,
    body: bytes,
    *,
    content_type: str = "application/json",
    ts: str | None = None,
    sign: bool = True,
) -> int:
    ts = str(int(time.time())) if ts is None else ts
    headers = {"Content-Type": content_type, "X-Slack-Request-Timestamp": ts}
    if sign:
        headers["X-Slack-Signature"] = _signed(body, ts)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{bot.url}/slack/events", data=body, headers=headers) as resp,
    ):
        return resp.status


FORM = "application/x-www-form-urlencoded"

BAD_TIMESTAMPS = ["abc", "1e10", "nan", "inf", "-1", "", " ", "9" * 400, "١٢٣", "0x10"]

SIGNED_BODIES: list[tuple[str, bytes, str]] = [
    ("not json", b"{not json", "application/json"),
    ("json array", b"[1, 2, 3]", "application/json"),
    ("json string", b'"event_callback"', "application/json"),
    ("json null", b"null", "application/json"),
    ("plain text", b"hello there", "text/plain"),
    ("no content type", b"payload=1", ""),
    ("non-utf8 json", b'{"type": "event_callback", "event": "\xff\xfe"}', "application/json"),
    ("non-utf8 form", b"payload=\xff\xfe\xfd", FORM),
    (
        "event is a string",
        json.dumps({"type": "event_callback", "event_id": "Ev1", "event": "app_mention"}).encode(),
        "application/json",
    ),
    (
        "event is a list",
        json.dumps({"type": "event_callback", "event_id": "Ev2", "event": [1]}).encode(),
        "application/json",
    ),
    (
        "event without type",
        json.dumps({"type": "event_callback", "event_id": "Ev3", "event": {"text": "hi"}}).encode(),
        "application/json",
    ),
    ("type is a number", json.dumps({"type": 5}).encode(), "application/json"),
    (
        "challenge is a dict",
        json.dumps({"type": "url_verification", "challenge": {"x": 1}}).encode(),
        "application/json",
    ),
    ("payload not json", urlencode({"payload": "{nope"}).encode(), FORM),
    ("payload a list", urlencode({"payload": "[]"}).encode(), FORM),
    ("payload a number", urlencode({"payload": "7"}).encode(), FORM),
    (
        "actions without user",
        urlencode(
            {
                "payload": json.dumps(
                    {
                        "type": "block_actions",
                        "actions": [{"action_id": "wo_start", "value": "WO-1"}],
                    }
                )
            }
        ).encode(),
        FORM,
    ),
    (
        "actions a string",
        urlencode(
            {
                "payload": json.dumps(
                    {"type": "block_actions", "user": {"id": "U1"}, "actions": "wo_start"}
                )
            }
        ).encode(),
        FORM,
    ),
    (
        "view without state",
        urlencode(
            {
                "payload": json.dumps(
                    {"type": "view_submission", "user": {"id": "U1"}, "view": {"callback_id": "x"}}
                )
            }
        ).encode(),
        FORM,
    ),
    ("command without user", urlencode({"command": "/delegate", "text": "help"}).encode(), FORM),
    (
        "command text huge",
        urlencode({"command": "/delegate", "user_id": "U1", "text": "x" * 200_000}).encode(),
        FORM,
    ),
    ("empty form", b"", FORM),
]

# Issue 19, item 9: signed JSON nested deeper than any Slack payload is refused with a 400.
NESTED_BODIES: list[tuple[str, bytes, str]] = [
    # Nesting deep enough to exhaust Python's recursion while decoding...
    ("deeply nested json", b"[" * 100_000 + b"]" * 100_000, "application/json"),
    (
        "deeply nested event",
        b'{"type": "event_callback", "event": {"type": "message", "x": '
        + b"[" * 50_000
        + b"]" * 50_000
        + b"}}",
        "application/json",
    ),
    ("deeply nested payload", urlencode({"payload": "[" * 50_000 + "]" * 50_000}).encode(), FORM),
    # ...or shallow enough to decode, yet far deeper than anything Slack sends.
    (
        "nested event json decodes",
        b'{"type": "event_callback", "event": {"type": "message", "x": '
        + b"[" * 900
        + b"]" * 900
        + b"}}",
        "application/json",
    ),
]


@pytest.mark.parametrize("ts", BAD_TIMESTAMPS)
async def test_a_malformed_timestamp_is_refused_without_a_traceback(
    bot: RunningBot, fake_slack: FakeSlack, ts: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    status = await _post(bot, b'{"type": "event_callback"}', ts=ts)
    assert status in (400, 401)
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


@pytest.mark.parametrize(
    ("name", "body", "content_type"), SIGNED_BODIES, ids=[b[0] for b in SIGNED_BODIES]
)
async def test_signed_nonsense_gets_a_4xx_and_no_traceback(
    bot: RunningBot,
    fake_slack: FakeSlack,
    name: str,
    body: bytes,
    content_type: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    status = await _post(bot, body, content_type=content_type)
    assert 400 <= status < 500 or status == 200, name
    assert status < 500
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()], [
        r.getMessage() for r in caplog.records if r.exc_info
    ]
    # The bot still answers a real request afterwards.
    status = await _post(bot, b"", ts="abc", sign=False)
    assert status in (400, 401)


async def test_unsigned_nonsense_is_refused(
    bot: RunningBot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for _name, body, content_type in SIGNED_BODIES:
        assert await _post(bot, body, content_type=content_type, sign=False) in (400, 401)
    assert not [r for r in caplog.records if r.exc_info]


async def test_a_replayed_slash_command_is_ignored(bot: RunningBot, fake_slack: FakeSlack) -> None:
    body = urlencode(
        {
            "command": "/delegate",
            "text": "list",
            "user_id": "U1",
            "channel_id": "C1",
            "team_id": "T1",
            "api_app_id": "A1",
            "trigger_id": "1.2.3",
            "response_url": fake_slack.response_url("first"),
        }
    ).encode()
    ts = str(int(time.time()))
    assert await _post(bot, body, content_type=FORM, ts=ts) == 200
    await fake_slack.wait_until(lambda: len(fake_slack.responses) == 1)
    for _ in range(3):
        assert await _post(bot, body, content_type=FORM, ts=ts) == 200
    # A fresh command is answered; the replays before it were not.
    await bot.sender.command(text="help", response_url=fake_slack.response_url("fresh"))
    await fake_slack.wait_until(lambda: any(r.key == "fresh" for r in fake_slack.responses))
    assert [r.key for r in fake_slack.responses] == ["first", "fresh"]


@pytest.mark.parametrize(
    ("name", "body", "content_type"), NESTED_BODIES, ids=[b[0] for b in NESTED_BODIES]
)
async def test_deeply_nested_signed_json_gets_a_400_and_no_traceback(
    bot: RunningBot,
    name: str,
    body: bytes,
    content_type: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    assert await _post(bot, body, content_type=content_type) == 400, name
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    # The bot still serves a well-formed request afterwards.
    assert (
        await _post(bot, json.dumps({"type": "url_verification", "challenge": "c"}).encode()) == 200
    )
