"""What goes with a deliverable into its thread besides the text: the files the run handed in,
and the canvas a long deliverable is put in. Called by `SlackReporter.result` on the one
delivery road; each piece is done once per key, like every other post.

A chat answer too long for a message goes the same way (`long_text_once`): a canvas where the
workspace allows one, else a file in the thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.blocks import sections, truncate
from bot.mrkdwn import untrusted
from bot.slack_client import is_transient
from bot.threads import Thread
from workers.errors import Busy
from workers.keys import canvas_key, deliverable_of, file_key
from workers.progress import RunResult
from workers.tools.files import delivered_name
from workers.workorder import WorkOrder

if TYPE_CHECKING:
    from bot.reporter import SlackReporter

log = logging.getLogger(__name__)

NO_CANVAS = "-"
"""Recorded against a canvas key when the workspace refused the canvas and a file went instead:
a retry then keeps to the file rather than adding a canvas beside it."""
# canvases.create's markdown is limited to 1 MiB (Slack's docs).
CANVAS_MAX_CHARS = 1_000_000
CLAIM_S = 60.0
BUSY_RETRY_S = 5.0


@dataclass(frozen=True)
class UploadFile:
    """One file to upload into an order's thread, once per `key`."""

    key: str
    purpose: str
    content: str | bytes
    filename: str
    title: str
    comment: str | None = None


@dataclass(frozen=True)
class Canvas:
    id: str
    url: str | None


async def upload_files(reporter: SlackReporter, order: WorkOrder, result: RunResult) -> None:
    """Upload each file handed in with the deliverable into the thread, once each. Its name is
    unique to the deliverable and the file, so an upload of unknown outcome can be found again."""
    assert order.id
    deliverable = deliverable_of(result.key)
    if not result.files or deliverable is None:
        return
    stored = {f.id: f for f in await reporter.store.runs.deliverable_files(deliverable)}
    for entry in result.files:
        row = stored.get(int(entry.get("id") or 0))
        if row is None:
            log.warning("a handed-in file is missing from the store", extra={"order": order.id})
            continue
        name = delivered_name(order.id, deliverable, row.position, row.name)
        await reporter._upload_once(
            order,
            result,
            file=UploadFile(
                key=file_key(result.key, row.position),
                purpose="file",
                content=row.content,
                filename=name,
                title=name,
            ),
        )


async def canvas_once(
    reporter: SlackReporter, order: WorkOrder, result: RunResult
) -> Canvas | None:
    """Put a long deliverable in a canvas shared with the thread's channel and post its link
    (once); None when the workspace does not allow the canvas, so the caller uploads a file."""
    canvas = await _shared_canvas_once(
        reporter,
        Thread.of(order),
        key=canvas_key(result.key),
        title=f"{order.id}: {order.title}",
        markdown=result.content,
    )
    if canvas is None:
        return None
    body = (
        f"*{order.id} deliverable:* {untrusted(result.summary)}\n\n"
        f"The deliverable is long, so it is in {canvas_link(canvas)}."
    )
    await reporter.post_once(
        order, key=result.key, purpose="result", text=body, blocks=sections(body)
    )
    return canvas


async def long_text_once(
    reporter: SlackReporter, thread: Thread, *, key: str, title: str, text: str, filename: str
) -> str:
    """Put `text` (too long for a message) in a canvas shared with the thread's channel, or
    where the workspace refuses canvases in a file in the thread, once per `key`; a mrkdwn
    link to it, for the message that says where it is."""
    canvas = await _shared_canvas_once(
        reporter, thread, key=f"{key}:canvas", title=title, markdown=text
    )
    if canvas is not None:
        return canvas_link(canvas)
    file_id = await reporter._upload_once(
        thread,
        file=UploadFile(
            key=f"{key}:file", purpose="answer", content=text, filename=filename, title=title[:250]
        ),
    )
    url = await permalink(reporter.client, file_id)
    return f"<{url}|the file>" if url else "the file above"


async def _shared_canvas_once(
    reporter: SlackReporter, thread: Thread, *, key: str, title: str, markdown: str
) -> Canvas | None:
    """The canvas holding `markdown`, created once per `key` and shared with the thread's
    channel; None when the workspace refuses canvases (recorded, so a retry keeps to a file)."""
    store = reporter.store
    state, existing = await store.slack.claim_slack_message(
        key=key, purpose="canvas", channel=thread.channel, owner=reporter.owner,
        order=thread.order, claim_s=CLAIM_S,
    )  # fmt: skip
    if state == "busy":
        raise Busy(BUSY_RETRY_S, f"another process is creating the canvas {key}")
    if state == "posted":
        canvas_id: str | None = existing.ts or ""
    else:
        try:
            canvas_id = await new_canvas(reporter.client, title=title, markdown=markdown)
        except SlackApiError:
            await store.slack.release_slack_message(key, reporter.owner)
            raise
        await store.slack.save_slack_message(
            key=key, purpose="canvas", channel=thread.channel, ts=canvas_id or NO_CANVAS,
            order=thread.order,
        )  # fmt: skip
    if not canvas_id or canvas_id == NO_CANVAS:
        return None
    return await shared_canvas(reporter.client, canvas_id, channel=thread.channel)


async def new_canvas(client: AsyncWebClient, *, title: str, markdown: str) -> str | None:
    """Create a canvas holding `markdown`; its id, or None when the workspace refuses canvases
    (off for the workspace or the plan, or the scope not granted), so the caller sends a file.
    A transient refusal raises: the same call may well be accepted later."""
    try:
        response = await client.canvases_create(
            title=title[:250],
            document_content={
                "type": "markdown",
                "markdown": truncate(markdown, CANVAS_MAX_CHARS, "…"),
            },
        )
    except SlackApiError as exc:
        if is_transient(exc):
            raise
        log.info("no canvas (%s); sending a file instead", exc.response.get("error"))
        return None
    return str(response["canvas_id"])


def canvas_link(canvas: Canvas) -> str:
    return f"<{canvas.url}|the canvas>" if canvas.url else f"canvas {canvas.id}"


async def shared_canvas(client: AsyncWebClient, canvas_id: str, *, channel: str) -> Canvas:
    """Let `channel` read the canvas, and find its link (both best effort: the canvas exists
    either way, and the thread says its id)."""
    try:
        await client.canvases_access_set(
            canvas_id=canvas_id, access_level="read", channel_ids=[channel]
        )
    except SlackApiError as exc:
        if is_transient(exc):
            raise
        log.info("could not share the canvas: %s", exc.response.get("error"))
    return Canvas(canvas_id, await permalink(client, canvas_id))


async def permalink(client: AsyncWebClient, file_id: str) -> str | None:
    """A file's (or canvas's) link, None when Slack will not say (files.info refused)."""
    try:
        response = await client.files_info(file=file_id)
    except SlackApiError as exc:
        if is_transient(exc):
            raise
        log.info("could not find the file's link: %s", exc.response.get("error"))
        return None
    link = (response.get("file") or {}).get("permalink")
    return str(link) if link else None


async def upload(
    client: AsyncWebClient, *, channel: str, thread_ts: str | None, file: UploadFile
) -> str:
    """Upload `file` into the thread; its file id."""
    response = await client.files_upload_v2(
        channel=channel,
        thread_ts=thread_ts,
        content=file.content,
        filename=file.filename,
        title=file.title,
        initial_comment=file.comment,
    )
    return str((response.get("files") or [{}])[0].get("id", "uploaded"))
