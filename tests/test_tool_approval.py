"""A tool call the authority policy says `ask` for parks the run with a prompt in the thread
(the tool, its MCP server, the arguments as inert text with their digest; Allow once / Allow for
this order / Deny) and the answer resumes it. End to end: signed Slack clicks, a real worker
pool, the fake model, and the SDK-built MCP test server over stdio, whose destructive tool
writes a marker file, so the tests see exactly which calls reached it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from bot.approval_blocks import approval_request_blocks, approval_request_text
from bot.delivery import Deliverer
from bot.ids import APPROVAL_DENY_ACTION, APPROVAL_ONCE_ACTION, APPROVAL_ORDER_ACTION
from bot.reporter import SlackReporter
from tests.fakes.anthropic import FakeAnthropic, Reply
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack
from tests.support.databases import Database
from tests.support.engine import Harness
from tests.support.factories import make_order
from tests.support.mcp import stdio_server
from tests.support.pipeline import Pipeline, PipelineFactory, button_value, verdicts
from tests.support.settings import POLICIES, engine_settings
from tests.support.waiting import eventually
from workers import queue
from workers.audit import canonical_json
from workers.config import Settings
from workers.progress import ApprovalRequest
from workers.store import Store
from workers.store.approvals import MAX_ARGUMENTS_CHARS, CallArguments
from workers.workorder import Status

ANALYTICS = {
    "description": "Read the warehouse; writing needs a yes in the thread.",
    "tools": ["read_thread", "ask_requester", "submit_deliverable", "wh.*"],
    "domains": [],
    "approvals": {"wh.fail": "deny"},
    "approvers": ["requester", "escalation"],
}

ALLOWING = {**ANALYTICS, "approvals": {"wh.drop_table": "allow"}}


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "dropped.txt"


@pytest.fixture
async def pipe(
    pipeline: PipelineFactory,
    marker: Path,
) -> AsyncIterator[Pipeline]:
    async with pipeline(
        admins=["UADMIN"],
        policies={"analytics": ANALYTICS},
        channels={"default": {"policy": "default", "allowed_policies": ["research", "analytics"]}},
        # Trusted: its destructive tool is still asked about, since the policy does not allow it.
        mcp_servers={"wh": stdio_server(trusted=True, env={"MCP_TEST_MARKER": str(marker)})},
    ) as p:
        yield p


def drop(table: str) -> Reply:
    return Reply.tool("wh__drop_table", {"table": table})


def submit() -> Reply:
    return Reply.tool("submit_deliverable", {"content": "| churn | 3.2% |", "summary": "Done."})


def dropped(marker: Path) -> list[str]:
    return marker.read_text().splitlines() if marker.exists() else []


def prompts(pipe: Pipeline) -> list[dict[str, Any]]:
    return pipe.posts_with(APPROVAL_ONCE_ACTION)


def message_of(pipe: Pipeline, post: dict[str, Any]) -> dict[str, Any]:
    [call] = [c for c in pipe.slack.calls_to("chat.postMessage") if c.args is post]
    return {"ts": call.response["ts"], "blocks": post["blocks"]}


async def answer(pipe: Pipeline, post: dict[str, Any], action: str, user: str) -> None:
    value = button_value(post, action)
    assert value is not None, f"no {action} button"
    await pipe.click(action, value, user, message=message_of(pipe, post))


def tool_results(pipe: Pipeline) -> str:
    return json.dumps(pipe.anthropic.requests[-1]["messages"])


def digest(arguments: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(arguments).encode()).hexdigest()


async def start(pipe: Pipeline, *execute: Reply) -> str:
    pipe.openai.script(verdicts(True, True, True))
    return await pipe.order_started(*execute, authority_policy="analytics")


async def test_an_ask_tool_parks_with_a_prompt_and_deny_never_reaches_the_server(
    pipe: Pipeline, marker: Path
) -> None:
    order_id = await start(pipe, drop("churn"), submit())

    # The run asks in the thread and parks: waiting for the requester, no worker slot held.
    await pipe.status_of(order_id, Status.WAITING_FOR_REQUESTER)
    prompt = await pipe.post(APPROVAL_ONCE_ACTION)
    shown = prompt["text"] + json.dumps(prompt["blocks"], ensure_ascii=False)
    assert f"*{order_id}* wants to call `drop_table` on the MCP server `wh`" in prompt["text"]
    assert "its server marks it destructive" in prompt["text"]
    assert '"table": "churn"' in prompt["text"] and digest({"table": "churn"}) in prompt["text"]
    assert APPROVAL_ORDER_ACTION in shown and APPROVAL_DENY_ACTION in shown
    assert "<@U1>" in prompt["text"]
    assert (await pipe.bot.store.orders.get_row(order_id)).lease_owner is None
    assert dropped(marker) == []

    # A bystander's click is refused, privately, and changes nothing.
    await answer(pipe, prompt, APPROVAL_DENY_ACTION, "U9")
    await pipe.slack.wait_until(lambda: any(e["recipient"] == "U9" for e in pipe.slack.ephemerals))
    assert "Only <@U1> or an admin can answer" in pipe.slack.ephemerals[-1]["text"]
    assert (await pipe.bot.store.orders.get_order(order_id)).status is Status.WAITING_FOR_REQUESTER

    # The requester denies: the prompt shows it, the model is told, the run goes on.
    await answer(pipe, prompt, APPROVAL_DENY_ACTION, "U1")
    answered = await pipe.update("Denied")
    assert "by <@U1>" in json.dumps(answered["blocks"])
    assert APPROVAL_ONCE_ACTION not in json.dumps(answered["blocks"]), "the buttons are gone"
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    assert "denied by <@U1>; do not ask again" in tool_results(pipe)
    assert dropped(marker) == [], "the server never saw the call"

    trail = await pipe.bot.store.audit.audit_trail(order_id)
    asked = [e.data for e in trail if e.kind == "approval_requested"]
    decided = [(e.actor, e.data) for e in trail if e.kind == "approval_decision"]
    assert [(a["tool"], a["server"], a["arguments_sha256"]) for a in asked] == [
        ("drop_table", "wh", digest({"table": "churn"}))
    ]
    [(actor, data)] = decided
    assert (actor, data["decision"], data["arguments_sha256"]) == (
        "U1",
        "deny",
        digest({"table": "churn"}),
    )
    calls = await pipe.bot.store.runs.tool_calls(order_id)
    first = calls[0]
    assert (first.name, first.server, first.allowed, first.outcome) == (
        "wh__drop_table",
        "wh",
        False,
        "denied",
    )


async def test_allow_once_runs_the_call_once_and_the_next_call_asks_again(
    pipe: Pipeline, marker: Path
) -> None:
    order_id = await start(pipe, drop("tmp_a"), drop("tmp_b"), submit())
    await pipe.status_of(order_id, Status.WAITING_FOR_REQUESTER)
    first = await pipe.post(APPROVAL_ONCE_ACTION)
    await answer(pipe, first, APPROVAL_ONCE_ACTION, "U1")
    await pipe.update("Allowed once")

    # The run resumes, makes the call, and its next call of the same tool asks anew.
    await eventually(lambda: len(prompts(pipe)) == 2)
    await pipe.status_of(order_id, Status.WAITING_FOR_REQUESTER)
    assert dropped(marker) == ["dropped tmp_a"]
    assert "tmp_b" in prompts(pipe)[-1]["text"]

    # A second click on the first prompt changes nothing.
    await answer(pipe, first, APPROVAL_ORDER_ACTION, "U1")
    await pipe.slack.wait_until(
        lambda: any("Already answered" in e["text"] for e in pipe.slack.ephemerals)
    )
    # An admin may answer too.
    await answer(pipe, prompts(pipe)[-1], APPROVAL_DENY_ACTION, "UADMIN")
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    assert dropped(marker) == ["dropped tmp_a"], "the once-allowed call ran exactly once"

    # The audit says whom each call ran for, who allowed it, and where.
    trail = await pipe.bot.store.audit.audit_trail(order_id)
    ran = [e.data for e in trail if e.kind == "tool_call" and e.data["name"] == "wh__drop_table"]
    assert [(d["requester"], d["approver"], d["server"], d["allowed"]) for d in ran] == [
        ("U1", "U1", "wh", True),
        ("U1", None, "wh", False),
    ]
    assert ran[0]["arguments_sha256"] == digest({"table": "tmp_a"})
    kinds = [e.kind for e in trail]
    assert kinds.count("approval_requested") == 2 and kinds.count("approval_grant_used") == 1


async def test_allow_for_this_order_lets_later_calls_of_the_tool_through(
    pipe: Pipeline, marker: Path
) -> None:
    order_id = await start(pipe, drop("tmp_a"), drop("tmp_b"), submit())
    await pipe.status_of(order_id, Status.WAITING_FOR_REQUESTER)
    prompt = await pipe.post(APPROVAL_ORDER_ACTION)
    await answer(pipe, prompt, APPROVAL_ORDER_ACTION, "U1")
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    assert dropped(marker) == ["dropped tmp_a", "dropped tmp_b"]
    assert len(prompts(pipe)) == 1, "the second call needed no question"
    await pipe.update("Allowed for this order")
    calls = [c for c in await pipe.bot.store.runs.tool_calls(order_id) if c.server == "wh"]
    assert [(c.approver, c.outcome) for c in calls] == [("U1", "ok"), ("U1", "ok")]


# The engine alone (no Slack): answers given through the store, as the buttons give them.


@pytest.fixture
async def harness(
    database: Database,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    marker: Path,
) -> AsyncIterator[Harness]:
    settings = engine_settings(
        database,
        fake_anthropic,
        fake_openai,
        policies={**POLICIES, "analytics": ANALYTICS, "allowing": ALLOWING},
        mcp_servers={"wh": stdio_server(env={"MCP_TEST_MARKER": str(marker)})},
    )
    store = Store(database.engine())
    h = Harness(settings, store, fake_anthropic, fake_openai)
    await h.tools.start()
    yield h
    await h.tools.close()
    await h.close()
    await store.close()


def asked_of(h: Harness, order_id: str) -> list[ApprovalRequest]:
    return [r for oid, r in h.reporter.approval_requests.values() if oid == order_id]


async def test_an_answer_on_one_order_never_grants_another(harness: Harness, marker: Path) -> None:
    h = harness
    a = await h.order(authority_policy="analytics")
    assert a.id is not None
    h.anthropic.script(drop("a1"))
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind == "parked"
    [request] = asked_of(h, a.id)
    await h.store.approvals.decide_approval(request.approval_id, "order", actor="U1")
    assert (await h.store.orders.get_order(a.id)).status is Status.QUEUED

    h.anthropic.script(drop("a2"), submit())
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind == "done"
    assert dropped(marker) == ["dropped a1", "dropped a2"]
    assert len(asked_of(h, a.id)) == 1

    # Another order of the same requester, same policy, same tool: asked about again.
    b = await h.order(authority_policy="analytics")
    assert b.id is not None
    h.anthropic.script(drop("b1"))
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind == "parked"
    assert len(asked_of(h, b.id)) == 1
    assert dropped(marker) == ["dropped a1", "dropped a2"]


async def test_an_answer_that_beats_the_park_requeues_the_run(harness: Harness) -> None:
    """The prompt goes out when the request is written, before the run has parked: an answer
    in between finds the order still running, so the park itself must notice it."""
    h = harness
    order = await h.order(authority_policy="analytics")
    assert order.id is not None
    claim = await queue.claim(h.store, h.settings, h.worker_id)
    assert claim.attempt is not None and claim.attempt.id is not None
    approval = await h.store.approvals.request_approval(
        order.id,
        tool_use_id="toolu_1",
        tool="drop_table",
        server="wh",
        arguments={"table": "t"},
        attempt_id=claim.attempt.id,
    )
    assert approval.id is not None
    decided = await h.store.approvals.decide_approval(approval.id, "once", actor="U1")
    assert decided.recorded and decided.order.status is Status.RUNNING
    parked = await h.store.queue.finish_run(
        order.id,
        h.worker_id,
        Status.WAITING_FOR_REQUESTER,
        reason="waiting for a person to allow a tool call",
        attempt_id=claim.attempt.id,
        awaiting=["toolu_1"],
    )
    assert parked is not None and parked.status is Status.QUEUED
    # The 'once' grant is spent by one call only.
    assert await h.store.approvals.use_one_time_grant(approval.id)
    assert not await h.store.approvals.use_one_time_grant(approval.id)


async def test_an_order_without_a_thread_is_refused_instead_of_asking(
    harness: Harness, marker: Path
) -> None:
    h = harness
    order = await h.order(authority_policy="analytics", channel=None, thread_ts=None)
    assert order.id is not None
    h.anthropic.script(drop("x"), submit())
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind == "done"
    assert "needs a person's approval and this order has no thread" in json.dumps(
        h.anthropic.requests[-1]["messages"]
    )
    assert dropped(marker) == [] and asked_of(h, order.id) == []


def test_long_arguments_are_cut_in_the_prompt_with_the_digest_of_all_of_them() -> None:
    arguments = {"sql": "INSERT INTO churn VALUES " + ", ".join(f"({i})" for i in range(3000))}
    kept = CallArguments.of(arguments)
    request = ApprovalRequest(
        approval_id=1,
        kind="tool",
        tool="write_query",
        server="wh",
        arguments=kept.text,
        arguments_sha256=kept.sha256,
        arguments_chars=kept.chars,
        reason="",
    )
    order = make_order(id="WO-5")
    text = approval_request_text(order, request, ["U1"])
    assert f"Truncated: 2,000 of {kept.chars:,} characters shown" in text
    assert "in the file `WO-5-request-1-arguments.json` above" in text
    assert kept.sha256 == digest(arguments) and kept.sha256 in text
    assert kept.text == canonical_json(arguments) and kept.chars <= MAX_ARGUMENTS_CHARS
    blocks = approval_request_blocks(order, request, ["U1"])
    assert [b["type"] for b in blocks][-2:] == ["actions", "context"]
    assert all(len(b["text"]["text"]) <= 3000 for b in blocks if b["type"] == "section")


async def test_a_destructive_tool_the_policy_allows_runs_without_asking(
    harness: Harness, marker: Path
) -> None:
    h = harness
    order = await h.order(authority_policy="allowing")
    assert order.id is not None
    h.anthropic.script(drop("tmp"), submit())
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind == "done"
    assert dropped(marker) == ["dropped tmp"] and asked_of(h, order.id) == []
    [call, _] = await h.store.runs.tool_calls(order.id)
    assert (call.server, call.approver, call.outcome) == ("wh", None, "ok")


async def test_long_arguments_go_to_the_thread_as_a_file_above_the_prompt(
    store: Store, fake_slack: FakeSlack
) -> None:
    """The prompt shows the start of long arguments; the approvers can read all of them in a
    file posted with it, once, whatever the deliverer retries."""
    order = await store.orders.create_order(
        make_order(status=Status.AWAITING_CONFIRMATION), actor="U1"
    )
    assert order.id is not None
    arguments = {"sql": "INSERT INTO churn VALUES " + ", ".join(f"({i})" for i in range(3000))}
    approval = await store.approvals.request_approval(
        order.id, tool_use_id="toolu_1", tool="write_query", server="wh", arguments=arguments
    )
    reporter = SlackReporter(
        store=store,
        client=AsyncWebClient(token=fake_slack.token, base_url=fake_slack.api_url),
        settings=Settings(),
    )
    deliverer = Deliverer(store, reporter, poll_s=1.0, backoff_s=0.01, max_backoff_s=0.05)
    fake_slack.fail_next("chat.postMessage", 503)  # the prompt fails once after the file is up

    async def delivered() -> bool:
        await deliverer.deliver_due()
        return not await store.outbox.undelivered()

    await eventually(delivered, interval_s=0.02)
    name = f"{order.id}-request-{approval.id}-arguments.json"
    [upload] = fake_slack.calls_to("files.getUploadURLExternal")
    assert upload.args["filename"] == name
    [file] = [f for f in fake_slack.files.values() if f["name"] == name]
    assert json.loads(file["content"]) == arguments  # all of it, not the 2,000 shown
    [prompt] = [c for c in fake_slack.calls_to("chat.postMessage") if c.response["ok"]]
    assert f"in the file `{name}` above" in prompt.args["text"]
