"""Files in and out of a run, end to end through the fake Slack and a fake model: files handed
in with a deliverable are uploaded to the thread once each, hashed in the audit chain and listed
on the review prompt; a long deliverable goes to a canvas (or a file where canvases are off);
a requester's attachment is readable by a run granted read_file and by no other."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from bot.ids import APPROVE_ACTION
from tests.fakes.anthropic import FakeAnthropic, Reply
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack
from tests.support.pipeline import Pipeline, pipeline_for, verdicts
from workers.store import Store
from workers.workorder import Status

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
async def pipe(
    store: Store,
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    settings_factory: Callable[..., Any],
) -> AsyncIterator[Pipeline]:
    async with pipeline_for(
        store, fake_slack, fake_anthropic, fake_openai, settings_factory, policies=POLICIES
    ) as p:
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
    order = await pipe.bot.store.get_order(order_id)
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
    entries = await pipe.bot.store.audit_trail(order_id)
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
