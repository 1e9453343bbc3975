"""A fetch outside the order's allowed domains is not simply refused: the run asks in the thread
(Allow once / Allow domain for this order / Deny), parks without a worker slot, and resumes with
the answer. End to end: signed Slack clicks, a real worker pool, the fake model, a local site."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from bot.ids import DOMAIN_DENY_ACTION, DOMAIN_ONCE_ACTION, DOMAIN_ORDER_ACTION
from tests.fakes import FakeServer
from tests.fakes.anthropic import Reply
from tests.fakes.openai import Reply as OpenAIReply
from tests.support.pipeline import Pipeline, PipelineFactory
from tests.support.waiting import eventually
from workers.config import Settings, load_settings
from workers.tools import ToolRegistry, load_tools
from workers.tools.suffixes import is_public_suffix
from workers.workorder import Status

pytestmark = pytest.mark.front_door  # SQLite only: tests/support/databases.py

HOST = "pricing.example"  # not on the research allowlist; served from loopback for the test


class Site(FakeServer):
    def __init__(self) -> None:
        super().__init__()
        self.hits: list[str] = []
        self.app.router.add_get("/{page}", self._page)

    async def _page(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        return web.Response(
            text=f"<p>Acme Basic costs $10 ({request.path})</p>", content_type="text/html"
        )


class Loopback(AbstractResolver):
    """Every name resolves to the test site's loopback address."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET,
             "proto": 0, "flags": 0}
        ]  # fmt: skip

    async def close(self) -> None:
        pass


def verdicts() -> OpenAIReply:
    return OpenAIReply.tool(
        "record_verdicts",
        {"verdicts": [{"index": i, "passed": True, "reason": "ok"} for i in (1, 2, 3)]},
    )


def fetch(url: str, reason: str = "Acme's current list prices") -> Reply:
    return Reply.tool("web_fetch", {"url": url, "reason": reason})


def submit(content: str = "| Acme | $10 |") -> Reply:
    return Reply.tool("submit_deliverable", {"content": content, "summary": "Prices."})


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    async with Site() as server:
        yield server


def loopback_tools(settings: Settings) -> ToolRegistry:
    """The configured tools, web_fetch resolving every host to loopback and treating exactly
    that address as public (the test site is there)."""
    return load_tools(
        settings,
        use_entry_points=False,
        resolver=Loopback(),
        also_allowed=frozenset({"127.0.0.1"}),
    )


@pytest.fixture
async def pipe(pipeline: PipelineFactory) -> AsyncIterator[Pipeline]:
    async with pipeline(
        tools=loopback_tools,
        admins=["UADMIN"],
    ) as p:
        yield p


def prompts(pipe: Pipeline) -> list[dict[str, Any]]:
    return pipe.posts_with(DOMAIN_ONCE_ACTION)


def button_value(post: dict[str, Any], action_id: str) -> str:
    for block in post["blocks"]:
        for element in block.get("elements") or []:
            if element.get("action_id") == action_id:
                return str(element["value"])
    raise AssertionError(f"no {action_id} button")


def message_of(pipe: Pipeline, post: dict[str, Any]) -> dict[str, Any]:
    [call] = [c for c in pipe.slack.calls_to("chat.postMessage") if c.args is post]
    return {"ts": call.response["ts"], "blocks": post["blocks"]}


async def decisions(pipe: Pipeline, order_id: str) -> list[tuple[str, str, str]]:
    trail = await pipe.bot.store.audit.audit_trail(order_id)
    return [
        (e.actor, e.data["host"], e.data["decision"]) for e in trail if e.kind == "domain_decision"
    ]


async def test_allow_once_reads_the_page_once_and_a_denial_reaches_the_model(
    pipe: Pipeline, site: Site
) -> None:
    page = f"http://{HOST}:{site.port}/pricing"
    pipe.openai.script(verdicts())
    order_id = await pipe.order_started(
        fetch(page),
        fetch(f"http://{HOST}:{site.port}/more", reason="Globex too"),
        submit(),
    )

    # The run asks in the thread and parks: waiting for the requester, no lease held.
    await pipe.status_of(order_id, Status.WAITING_FOR_REQUESTER)
    prompt = await pipe.post(DOMAIN_ONCE_ACTION)
    text = prompt["text"] + json.dumps(prompt["blocks"], ensure_ascii=False)
    assert f"{order_id}* wants to read `{HOST}:{site.port}/pricing`" in text
    assert "Acme's current list prices" in text and "<@U1>" in text
    assert DOMAIN_ORDER_ACTION in text and DOMAIN_DENY_ACTION in text
    row = await pipe.bot.store.orders.get_row(order_id)
    assert row.lease_owner is None, "a parked run holds no worker slot"
    assert site.hits == [], "nothing is fetched before a person allows it"

    # Someone who is neither requester, escalation contact nor admin cannot answer.
    first = message_of(pipe, prompt)
    approval = button_value(prompt, DOMAIN_ONCE_ACTION)
    await pipe.click(DOMAIN_ONCE_ACTION, approval, "U9", message=first)
    await pipe.slack.wait_until(lambda: any(e["recipient"] == "U9" for e in pipe.slack.ephemerals))
    assert "or an admin can allow" in pipe.slack.ephemerals[-1]["text"]
    assert (await pipe.bot.store.orders.get_order(order_id)).status is Status.WAITING_FOR_REQUESTER

    # The requester allows it once: the run resumes and the page is read, exactly once.
    await pipe.click(DOMAIN_ONCE_ACTION, approval, "U1", message=first)
    answered = await pipe.update("Allowed once")
    assert DOMAIN_ONCE_ACTION not in json.dumps(answered["blocks"]), "the buttons disappear"
    await eventually(lambda: len(prompts(pipe)) == 2)  # the next call, to the same host, asks again
    assert site.hits == ["/pricing"]
    after_once = json.dumps(pipe.anthropic.requests[-1]["messages"])
    assert "Acme Basic costs $10 (/pricing)" in after_once and "<untrusted" in after_once

    # A second click on the answered prompt changes nothing.
    await pipe.click(DOMAIN_DENY_ACTION, approval, "U1", message=first)
    await pipe.slack.wait_until(
        lambda: any("Already answered" in e["text"] for e in pipe.slack.ephemerals)
    )
    # Deny the second request: the model is told, and submits without the page.
    await pipe.status_of(order_id, Status.WAITING_FOR_REQUESTER)
    second = prompts(pipe)[-1]
    await pipe.click(
        DOMAIN_DENY_ACTION,
        button_value(second, DOMAIN_DENY_ACTION),
        "UADMIN",
        message=message_of(pipe, second),
    )
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    assert site.hits == ["/pricing"], "the denied page was never fetched"
    refusal = json.dumps(pipe.anthropic.requests[-1]["messages"])
    assert f"<@UADMIN> denied reading {HOST}" in refusal

    assert await decisions(pipe, order_id) == [("U1", HOST, "once"), ("UADMIN", HOST, "deny")]
    kinds = [e.kind for e in await pipe.bot.store.audit.audit_trail(order_id)]
    assert kinds.count("domain_requested") == 2 and kinds.count("domain_grant_used") == 1


async def test_allow_for_the_order_adds_the_domain_for_later_fetches(
    pipe: Pipeline, site: Site
) -> None:
    pipe.openai.script(verdicts())
    order_id = await pipe.order_started(
        fetch(f"http://{HOST}:{site.port}/pricing"),
        fetch(f"http://www.{HOST}:{site.port}/plans"),  # a subdomain: covered, no new question
        submit(),
    )
    await pipe.status_of(order_id, Status.WAITING_FOR_REQUESTER)
    prompt = await pipe.post(DOMAIN_ORDER_ACTION)
    await pipe.click(
        DOMAIN_ORDER_ACTION,
        button_value(prompt, DOMAIN_ORDER_ACTION),
        "U1",
        message=message_of(pipe, prompt),
    )
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    assert site.hits == ["/pricing", "/plans"]
    assert len(prompts(pipe)) == 1, "the second fetch needed no question"
    assert await decisions(pipe, order_id) == [("U1", HOST, "order")]
    await pipe.update("Allowed for this order")


async def test_a_forbidden_address_is_refused_outright_without_asking(
    pipe: Pipeline, site: Site
) -> None:
    pipe.openai.script(verdicts())
    order_id = await pipe.order_started(
        fetch("http://169.254.169.254/latest/meta-data/", reason="need credentials"),
        submit(),
    )
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    assert prompts(pipe) == []
    assert "link-local" in json.dumps(pipe.anthropic.requests[-1]["messages"])


def test_no_shipped_policy_that_intake_may_grant_reads_every_domain() -> None:
    settings = load_settings()
    research = settings.policies["research"]
    assert "*" not in research.domains and "wikipedia.org" in research.domains
    for name in settings.channel_defaults(None).grantable_policies():
        assert "*" not in settings.policies[name].domains, name


@pytest.mark.parametrize("suffix", ["github.io", "com", "s3.amazonaws.com", "co.uk"])
async def test_a_public_suffix_can_be_allowed_once_never_as_a_domain(
    pipe: Pipeline, site: Site, suffix: str
) -> None:
    """Issue 19, item 8: allowing `github.io` for the order would allow `attacker.github.io`."""
    pipe.openai.script(verdicts())
    order_id = await pipe.order_started(
        fetch(f"http://{suffix}:{site.port}/pricing"),
        fetch(f"http://attacker.{suffix}:{site.port}/exfil"),
        submit(),
    )
    await pipe.status_of(order_id, Status.WAITING_FOR_REQUESTER)
    prompt = await pipe.post(DOMAIN_ONCE_ACTION)
    shown = prompt["text"] + json.dumps(prompt["blocks"], ensure_ascii=False)
    assert DOMAIN_ORDER_ACTION not in shown and "only be allowed once" in shown
    approval = button_value(prompt, DOMAIN_ONCE_ACTION)
    # A forged click on the button that is not there is refused, and nothing is recorded.
    await pipe.click(DOMAIN_ORDER_ACTION, approval, "U1", message=message_of(pipe, prompt))
    await pipe.slack.wait_until(
        lambda: any("public suffix" in e["text"] for e in pipe.slack.ephemerals)
    )
    assert await decisions(pipe, order_id) == []
    await pipe.click(DOMAIN_ONCE_ACTION, approval, "U1", message=message_of(pipe, prompt))
    # The next host under the suffix is not covered: the run asks again.
    await eventually(lambda: len(prompts(pipe)) == 2)
    assert site.hits == ["/pricing"]
    assert f"attacker.{suffix}" in prompts(pipe)[-1]["text"]


async def test_allowing_a_domain_says_it_covers_its_subdomains(pipe: Pipeline, site: Site) -> None:
    order_id = await pipe.order_started(fetch(f"http://{HOST}:{site.port}/pricing"))
    await pipe.status_of(order_id, Status.WAITING_FOR_REQUESTER)
    prompt = await pipe.post(DOMAIN_ORDER_ACTION)
    assert f"covers `{HOST}` and all its subdomains" in prompt["text"]


@pytest.mark.parametrize(
    ("host", "public"),
    [
        ("github.io", True),
        ("GITHUB.IO.", True),
        ("com", True),
        ("co.uk", True),
        ("s3.amazonaws.com", True),
        ("s3.eu-west-1.amazonaws.com", True),
        ("octocat.github.io", False),
        ("bbc.co.uk", False),
        ("example.com", False),
        ("bucket.s3.amazonaws.com", False),
        ("myshopify.com", True),  # from the list itself, in no hand-kept table
        ("pvt.k12.ma.us", True),
        ("shop.myshopify.com", False),
    ],
)
def test_public_suffixes_are_told_from_the_domains_under_them(host: str, public: bool) -> None:
    assert is_public_suffix(host) is public
