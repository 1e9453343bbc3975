"""Files in and out of a run, end to end through the fake Slack and a fake model: files handed
in with a deliverable are uploaded to the thread once each, hashed in the audit chain and listed
on the review prompt; a long deliverable goes to a canvas (or a file where canvases are off);
a requester's attachment is readable by a run granted read_file and by no other."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.ids import APPROVE_ACTION
from tests.fakes.anthropic import Reply
from tests.support.pipeline import Pipeline, PipelineFactory, verdicts
from workers.workorder import Status

pytestmark = pytest.mark.front_door  # SQLite only: tests/support/databases.py

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(64))
CSV = "vendor,price\nAcme,10\nGlobex,12\n"
POLICIES = {
    "research": {
        "description": "Read the thread and what the requester attached.",
        "tools": ["read_thread", "ask_requester", "submit_deliverable", "read_file"],
        "domains": [],
    },
    "default": {"tools": ["read_thread", "ask_requester", "submit_deliverable"], "domains": []},
}


def submit(content: str = "Pricing table attached.", **more: Any) -> Reply:
    return Reply.tool(
        "submit_deliverable", {"content": content, "summary": "Pricing table ready.", **more}
    )


@pytest.fixture
async def pipe(pipeline: PipelineFactory) -> AsyncIterator[Pipeline]:
    async with pipeline(policies=POLICIES) as p:
        yield p


async def test_files_handed_in_are_uploaded_once_each_hashed_and_listed(pipe: Pipeline) -> None:
    pipe.openai.script(verdicts(True, True, True))
    files = [
        {"name": "prices.csv", "content": CSV},
        {"name": "chart.png", "content_base64": base64.b64encode(PNG).decode()},
    ]
    order_id = await pipe.order_started(submit(files=files))
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    prompt = await pipe.post(APPROVE_ACTION)

    # Uploaded through Slack's external upload, each once, into the order's thread.
    order = await pipe.bot.store.orders.get_order(order_id)
    uploads = pipe.slack.calls_to("files.getUploadURLExternal")
    names = sorted(c.args["filename"] for c in uploads)
    assert names == [f"{order_id}-d1-1-prices.csv", f"{order_id}-d1-2-chart.png"]
    completes = pipe.slack.calls_to("files.completeUploadExternal")
    assert len(completes) == 2
    assert all(c.args.get("thread_ts") == order.thread_ts for c in completes)
    stored = {f["name"]: f["content"] for f in pipe.slack.files.values()}
    assert stored[f"{order_id}-d1-1-prices.csv"] == CSV.encode()
    assert stored[f"{order_id}-d1-2-chart.png"] == PNG

    # Listed on the review prompt by name and size.
    shown = json.dumps(prompt["blocks"])
    assert "prices.csv" in shown and "chart.png" in shown and f"{len(CSV)} bytes" in shown

    # The audit chain names each file by its hash.
    entries = await pipe.bot.store.audit.audit_trail(order_id)
    [handed_in] = [e for e in entries if e.kind == "deliverable"]
    hashes = {f["name"]: f["sha256"] for f in handed_in.data["files"]}
    assert hashes == {
        "prices.csv": hashlib.sha256(CSV.encode()).hexdigest(),
        "chart.png": hashlib.sha256(PNG).hexdigest(),
    }

    # Approving does not upload anything again.
    await pipe.click(APPROVE_ACTION, order_id, "U7")
    await pipe.status_of(order_id, Status.APPROVED)
    assert len(pipe.slack.calls_to("files.completeUploadExternal")) == 2


async def test_a_bad_or_oversize_file_is_a_tool_error_the_model_sees(pipe: Pipeline) -> None:
    pipe.openai.script(verdicts(True, True, True))
    pipe.bot.settings.tools.files.max_file_bytes = 1_000  # the worker shares these settings
    fake_png = base64.b64encode(b"GIF89a not a png").decode()
    order_id = await pipe.order_started(
        submit(files=[{"name": "chart.png", "content_base64": fake_png}]),
        submit(files=[{"name": "run.exe", "content_base64": fake_png}]),
        submit(files=[{"name": "big.csv", "content": "x" * 2_000}]),
        submit(files=[{"name": "prices.csv", "content": CSV}]),
    )
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    errors = [
        b["content"]
        for r in pipe.anthropic.requests
        for m in r["messages"]
        if isinstance(m["content"], list)
        for b in m["content"]
        if b.get("type") == "tool_result" and b.get("is_error")
    ]
    assert any("chart.png: the content is not a PNG file" in e for e in errors)
    assert any("run.exe: this type of file cannot be handed in" in e for e in errors)
    assert any("big.csv: 2,000 bytes is over the limit of 1,000 bytes" in e for e in errors)
    [deliverable] = await pipe.bot.store.runs.deliverables(order_id)
    assert [f.name for f in await pipe.bot.store.runs.deliverable_files(deliverable.id or 0)] == [
        "prices.csv"
    ]
    await pipe.slack.wait_for("files.completeUploadExternal")


async def test_a_long_deliverable_goes_to_a_canvas_linked_from_the_review(pipe: Pipeline) -> None:
    pipe.openai.script(verdicts(True, True, True))
    long = "# Pricing\n\n" + "Acme charges $10 a seat. " * 400
    order_id = await pipe.order_started(submit(long))
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    prompt = await pipe.post(APPROVE_ACTION)
    [canvas_id] = pipe.slack.canvases
    assert pipe.slack.canvases[canvas_id]["markdown"] == long
    assert pipe.slack.canvases[canvas_id]["channels"] == {"C1": "read"}
    link = f"https://test.slack.com/docs/T1/{canvas_id}"
    assert link in json.dumps(prompt["blocks"])
    assert link in (await pipe.post("is long, so it is in"))["text"]
    assert not pipe.slack.calls_to("files.getUploadURLExternal")  # no file beside it


async def test_without_canvases_a_long_deliverable_is_a_file(pipe: Pipeline) -> None:
    pipe.openai.script(verdicts(True, True, True))
    pipe.slack.fail_next("canvases.create", status=200, error="canvas_disabled_user_team")
    long = "Acme charges $10 a seat. " * 400
    order_id = await pipe.order_started(submit(long))
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    prompt = await pipe.post(APPROVE_ACTION)
    [upload] = pipe.slack.calls_to("files.getUploadURLExternal")
    [item] = await pipe.bot.store.runs.deliverables(order_id)
    assert upload.args["filename"] == f"{order_id}-deliverable-{item.id}.md"  # one per version
    assert not pipe.slack.canvases and "canvas" not in json.dumps(prompt["blocks"])


async def test_an_attached_file_is_read_by_a_granted_run_only(pipe: Pipeline) -> None:
    attached = pipe.slack.add_file("churn.csv", b"quarter,churn\nQ3,4.2%\n")
    other = pipe.slack.add_file("secret.csv", b"not yours", user="U9")
    pipe.anthropic.script(
        Reply.tool("intake_decision", {"kind": "questions", "questions": ["Which quarter?"]})
    )
    mention = pipe.bot.sender.app_mention("<@UBOT> churn one-pager", channel="C1")
    await pipe.bot.sender.event(mention)
    await pipe.post("Which quarter?")
    reply = pipe.bot.sender.app_mention("<@UBOT> Q3, see the file", channel="C1")
    reply["thread_ts"] = mention["ts"]
    reply["files"] = [attached]
    from tests.support.intake import draft

    pipe.anthropic.script(draft(reviewers=[]))
    await pipe.bot.sender.event(reply)
    # Someone else's file in the same thread is not the requester's to hand over.
    stray = pipe.bot.sender.app_mention("<@UBOT> also this", channel="C1", user="U9")
    stray["thread_ts"] = mention["ts"]
    stray["files"] = [other]
    await pipe.bot.sender.event(stray)
    await pipe.slack.wait_until(lambda: bool(pipe.posts_with("Start")))
    [order] = await pipe.bot.store.orders.list_orders()
    assert order.id
    pipe.openai.script(verdicts(True, True, True))
    pipe.anthropic.script(
        Reply.tool("read_file", {}),
        Reply.tool("read_file", {"file_id": attached["id"]}),
        Reply.tool("read_file", {"file_id": other["id"]}),
        submit("Q3 churn was 4.2%."),
    )
    from bot.cards import START_ACTION

    await pipe.click(START_ACTION, order.id, "U1")
    await pipe.status_of(order.id, Status.AWAITING_REVIEW)
    results = [
        b
        for m in pipe.anthropic.requests[-1]["messages"]
        if isinstance(m["content"], list)
        for b in m["content"]
        if b.get("type") == "tool_result"
    ]
    assert "churn.csv" in results[0]["content"] and "secret.csv" not in results[0]["content"]
    assert "<untrusted" in results[1]["content"] and "Q3,4.2%" in results[1]["content"]
    assert results[2]["is_error"] and "not a file the requester attached" in results[2]["content"]
    assert pipe.slack.downloads == [attached["id"]]


async def test_read_file_is_not_offered_to_an_ungranted_run(pipe: Pipeline) -> None:
    pipe.openai.script(verdicts(True, True, True))
    order_id = await pipe.order_started(submit(), authority_policy="default")
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    names = [t["name"] for t in pipe.anthropic.requests[-1].get("tools") or []]
    assert "submit_deliverable" in names and "read_file" not in names
