"""The engine's `ProgressReporter`, implemented over Slack: the thread is the control surface.

One status message per order is updated in place, rendered from the order's current row: an
update built from an older state (a retry that arrives late) is skipped instead of overwriting
what came after it. Everything else (questions, results, exceptions) is posted once per
idempotency key: the key is claimed atomically in the database before the post (one process
wins; a dead claimer's claim expires) and carried in the message's metadata, so a run resumed
after a crash finds the message it already posted instead of posting it again.

`deliver` sends a message of the durable outbox (workers.store.outbox), rendered at send time
from the order's current row; bot.delivery calls it.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot import intake_replies as intake_reply
from bot.agent_session import SESSION_OF, set_session
from bot.approval_blocks import (
    SHOWN_ARGUMENTS_CHARS,
    approval_request_blocks,
    approval_request_text,
    arguments_filename,
    decided_line,
)
from bot.blocks import (
    MARKDOWN_TEXT_MAX,
    MESSAGE_TEXT_MAX,
    Block,
    button,
    cap_blocks,
    context,
    markdown_blocks,
    sections,
    truncate,
)
from bot.cards import STATE_LABELS, card_note_text, card_text, mention, render_card
from bot.deliverable_files import Canvas, UploadFile, canvas_once, upload, upload_files
from bot.domain_blocks import domain_request_blocks, domain_request_text
from bot.home_refresh import HomeRefresher
from bot.ids import (
    CANCEL_ACTION,
    EXCEPTION_CANCEL_ACTION,
    EXTEND_ACTION,
    EXTEND_CUSTOM_ACTION,
    RETRY_ACTION,
    review_value,
)
from bot.live_plan import LivePlan
from bot.mrkdwn import untrusted, untrusted_markdown
from bot.review_blocks import (
    decided_blocks,
    decision_line,
    decision_word,
    review_actions,
    review_blocks,
)
from bot.threads import Thread
from workers import intake_replies
from workers.config import Settings
from workers.delivery import replay
from workers.dialogue import open_points
from workers.errors import Busy, RetryLater
from workers.keys import card_key, deliverable_of, result_key, review_key, status_key
from workers.models import OutboxMessage
from workers.permissions import reviewers_of
from workers.progress import (
    ApprovalRequest,
    CardNote,
    DomainRequest,
    ExceptionDecision,
    ExceptionKind,
    ReviewDecision,
    RunResult,
    Spend,
    StatusStep,
    render_step,
)
from workers.review import decision_on
from workers.states import ACTIVE, IN_FLIGHT
from workers.store import Store
from workers.store.outbox import RUN
from workers.store.slack import UNCERTAIN
from workers.workorder import Status, WorkOrder

log = logging.getLogger(__name__)

# The plan the status row being delivered carries (workers.store.outbox `merge_plan`); set per
# delivery, so concurrent deliveries of one reporter each see their own.
_PLAN: ContextVar[Mapping[str, Any] | None] = ContextVar("status_plan", default=None)

METADATA_EVENT = "delegate_post"
EXCEPTION_TITLES: dict[str, str] = {
    "budget": "Budget exhausted",
    "authority": "Stopped by its authority policy",
    "crashed": "The run kept crashing",
    "provider": "The model provider is unavailable",
    "refusal": "The model declined the work",
    "stalled": "The run stalled",
    "quota": "Waited too long for team quota",
}


INLINE_DELIVERABLE_MAX = 6000
# How long a claim to post a key holds before another process may take it over.
POST_CLAIM_S = 60.0
# Another process is posting the same key: look again after this long.
BUSY_RETRY_S = 5.0


class LookupFailed(Exception):
    """Slack could not say whether an uncertain post was made; the deliverer retries later."""

    def __init__(self, key: str) -> None:
        super().__init__(f"could not look for {key} in its thread")


class SlackReporter:
    """Posts an order's progress into its thread (and refreshes the App Homes that show it)."""

    def __init__(
        self,
        *,
        store: Store,
        client: AsyncWebClient,
        settings: Settings,
        home: HomeRefresher | None = None,
        owner: str | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.home = home
        self.settings = settings
        """What the work-order card shows of the configuration (its policy's tools)."""
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.live = LivePlan(store=store, client=client, owner=self.owner)

    async def deliver(self, message: OutboxMessage) -> None:
        """Send one message of the durable outbox, rendered from the order's current row."""
        if message.kind in intake_replies.INTAKE_KINDS:
            await intake_reply.send(self, message)
            return
        if message.kind == intake_replies.CARD:
            assert message.order_id is not None
            order = await self.store.orders.get_order(message.order_id)
            await self.card_shown(order, dict(message.payload))
            return
        token = _PLAN.set(dict(message.payload) if message.kind == "status" else None)
        try:
            await replay(self.store, self, message)
        finally:
            _PLAN.reset(token)

    # ProgressReporter

    async def status(self, order: WorkOrder, step: str, spend: Spend) -> None:
        # A step can carry a model's choice ("Reading <host>") or a tool's error: inert. Only
        # the ids the engine put beside it (who acted, whom it waits for) become mentions.
        if isinstance(step, StatusStep):
            shown = render_step(untrusted(step.text), by=step.by, person=step.person, mention=mention)
        else:
            shown = untrusted(step)
        await self._show_status(order, shown, spend.describe())

    async def waiting(self, order: WorkOrder, reason: str) -> None:
        await self._show_status(order, f"Waiting: {untrusted(reason)}", "")

    async def question(self, order: WorkOrder, text: str, *, key: str) -> None:
        body = f"{mention(order.requester)} a question about *{order.id}*:\n{untrusted(text)}\n_Reply in this thread._"
        await self.post_once(order, key=key, purpose="question", text=body, blocks=sections(body))

    async def domain_request(self, order: WorkOrder, request: DomainRequest, *, key: str) -> None:
        """Ask whether the run may read a page outside its allowed domains, with three buttons."""
        assert order.id
        await self.post_once(
            order,
            key=key,
            purpose="domain",
            text=domain_request_text(order, request),
            blocks=domain_request_blocks(order, request),
        )
        self._changed(order)

    async def approval_request(
        self, order: WorkOrder, request: ApprovalRequest, *, key: str
    ) -> None:
        """Ask the policy's approvers whether the run may make a tool call, with three buttons.
        Arguments longer than the prompt shows are cut there, with the digest of all of them.
        Answered before it went out, it goes out answered."""
        assert order.id
        if request.decision is None and request.arguments_chars > SHOWN_ARGUMENTS_CHARS:
            # The prompt shows the start; people deciding can read all of it, just above.
            await self._upload_once(
                order,
                file=UploadFile(
                    key=f"{key}:arguments",
                    purpose="approval-arguments",
                    content=request.arguments,
                    filename=arguments_filename(order.id, request),
                    title=f"{order.id}: the arguments of the call waiting for approval",
                ),
            )
        approvers = list(request.approvers) or [order.requester]
        blocks = approval_request_blocks(order, request, approvers)
        if request.decision is not None:
            blocks = decided_blocks(blocks, line=decided_line(request))
        await self.post_once(
            order,
            key=key,
            purpose="approval",
            text=approval_request_text(order, request, approvers),
            blocks=blocks,
        )
        self._changed(order)

    async def approval_decided(
        self, order: WorkOrder, request: ApprovalRequest, *, key: str
    ) -> None:
        """Show who answered on the prompt posted under `key` (a tool call's or a domain's): its
        buttons give way to the answer. A prompt never posted needs nothing."""
        posted = await self.store.slack.slack_message(key)
        if posted is None or not posted.ts:
            return
        line = decided_line(request)
        if request.kind == "domain":
            shown = DomainRequest(request.approval_id, request.host, request.url, request.reason)
            blocks = domain_request_blocks(order, shown)
        else:  # answered: nobody needs pinging again
            blocks = approval_request_blocks(order, request, list(request.approvers))
        try:
            await self.client.chat_update(
                channel=posted.channel,
                ts=posted.ts,
                text=line,
                blocks=decided_blocks(blocks, line=line),
            )
        except SlackApiError as exc:
            if exc.response.get("error") in ("message_not_found", "cant_update_message"):
                log.info(
                    "the approval prompt is gone; the answer stands", extra={"order": order.id}
                )
                return
            _raise_retry_later(exc)
            raise
        self._changed(order)

    async def result(self, order: WorkOrder, result: RunResult) -> None:
        """Post the deliverable (as text, or as a file when long), then the review prompt."""
        assert order.id and order.channel
        canvas: Canvas | None = None
        shown = untrusted_markdown(result.content)
        if len(result.content) <= INLINE_DELIVERABLE_MAX and len(shown) <= MARKDOWN_TEXT_MAX:
            # The deliverable as Markdown, which Slack renders (a table arrives as a table).
            head = f"*{order.id} deliverable:* {untrusted(result.summary)}"
            await self.post_once(
                order,
                key=result.key,
                purpose="result",
                text=truncate(f"{head}\n\n{untrusted(result.content)}", MESSAGE_TEXT_MAX),
                blocks=[*sections(head), *markdown_blocks(shown)],
            )
        else:
            # A canvas where the workspace allows one, else a file (bot.deliverable_files).
            canvas = await canvas_once(self, order, result)
            if canvas is None:
                await self._upload_once(order, result)
        await upload_files(self, order, result)
        blocks = review_blocks(order, result, canvas_url=canvas.url if canvas else None)
        deliverable = deliverable_of(result.key)
        decided = await decision_on(self.store, order.id, deliverable) if deliverable else None
        if decided is not None:  # decided (from App Home) before this prompt got out
            line = decision_line(
                decision_word(decided.decision, self_approved=decided.self_approved),
                decided.actor,
                decided.at,
                decided.feedback,
            )
            blocks = decided_blocks(blocks, line=line)
        await self.post_once(
            order,
            key=review_key(result.key),
            purpose="review",
            text=f"{order.id} is ready for review by {', '.join(mention(r) for r in reviewers_of(order))}",
            blocks=blocks,
        )
        self._changed(order)

    async def decided(self, order: WorkOrder, decision: ReviewDecision) -> None:
        """Replace the review prompt's buttons with who decided. A prompt not posted yet needs
        nothing: `result` renders the decision when it goes out."""
        assert order.id
        key = result_key(order.id, decision.deliverable_id)
        posted = await self.store.slack.slack_message(review_key(key))
        if posted is None or not posted.ts:
            return
        item = next(
            (d for d in await self.store.runs.deliverables(order.id) if d.id == decision.deliverable_id),
            None,
        )
        if item is None:
            return
        result = RunResult(
            content=item.content,
            summary=item.summary,
            key=key,
            verdicts=item.verdicts,
            spend=await self.store.ledger.spend(order.id),
        )
        word = decision_word(decision.decision, self_approved=decision.self_approved)
        line = decision_line(word, decision.actor, decision.at, decision.feedback)
        blocks = decided_blocks(review_blocks(order, result), line=line)
        try:
            await self.client.chat_update(
                channel=posted.channel, ts=posted.ts, text=f"{order.id}: {line}", blocks=blocks
            )
        except SlackApiError as exc:
            if exc.response.get("error") in ("message_not_found", "cant_update_message"):
                log.info("the review prompt is gone; the decision stands", extra={"order": order.id})
                return
            _raise_retry_later(exc)
            raise
        self._changed(order)

    async def exception(
        self, order: WorkOrder, kind: ExceptionKind, message: str, spend: Spend, *, key: str
    ) -> None:
        body, blocks = exception_blocks(order, kind, message, spend)
        await self.post_once(order, key=key, purpose=f"exception:{kind}", text=body, blocks=blocks)
        self._changed(order)

    async def exception_decided(self, order: WorkOrder, decision: ExceptionDecision) -> None:
        """Show who pressed Extend, Retry or Cancel on the exception notice: the notice as it
        was posted, its buttons replaced by that line. A notice never posted needs nothing."""
        posted = await self.store.slack.slack_message(decision.key)
        if posted is None or not posted.ts:
            return
        line = exception_decision_line(decision)
        _, blocks = exception_blocks(order, decision.kind, decision.message, decision.spend)
        await self._edit(
            order,
            posted.channel,
            posted.ts,
            text=line,
            blocks=decided_blocks(blocks, line=line),
            gone="the exception notice is gone; the action stands",
        )

    async def card_shown(self, order: WorkOrder, payload: Mapping[str, Any]) -> None:
        """Show the order's card as it stands: posted once (its key), edited in place after.
        An order with no thread (from the console) has no card to show."""
        assert order.id
        if not order.channel:
            return
        edited_by = payload.get("edited_by")
        note = f"Edited by {mention(str(edited_by))}." if edited_by else ""
        blocks = render_card(
            order, self.settings, open_points=await open_points(self.store, order.id), note=note
        )
        text = card_text(order)
        channel, ts, posted_now = await self._post(
            order, key=card_key(order.id), purpose="card", text=text, blocks=blocks
        )
        if not posted_now:
            await self._edit(
                order, channel, ts, text=text, blocks=blocks, gone="the card is gone; the order stands"
            )

    async def card_note(self, order: WorkOrder, note: CardNote, *, actor: str) -> None:
        """Redraw the order's card as the order stands, with who started or cancelled it. A
        card never posted (an order from the console) needs nothing."""
        assert order.id
        posted = await self.store.slack.slack_message(card_key(order.id))
        if posted is not None and not posted.ts and posted.claimed_by not in (None, "", UNCERTAIN):
            # Pressed the moment the card showed: it is still being recorded.
            raise Busy(BUSY_RETRY_S, "the card is still being posted")
        if posted is None or not posted.ts:
            return
        blocks = render_card(
            order,
            self.settings,
            open_points=await open_points(self.store, order.id),
            note=card_note_text(note, actor),
        )
        await self._edit(
            order,
            posted.channel,
            posted.ts,
            text=card_text(order),
            blocks=blocks,
            gone="the card is gone; the order stands",
        )

    async def _edit(
        self, order: WorkOrder, channel: str, ts: str, *, text: str, blocks: list[Block], gone: str
    ) -> None:
        """Edit a message the outbox owes an edit: one deleted (or too old to edit) needs none;
        any other refusal goes back to the deliverer, which retries or gives up on it."""
        try:
            await self.client.chat_update(channel=channel, ts=ts, text=text, blocks=blocks)
        except SlackApiError as exc:
            if exc.response.get("error") in ("message_not_found", "cant_update_message"):
                log.info(gone, extra={"order": order.id})
                return
            _raise_retry_later(exc)
            raise

    async def notice(
        self, order: WorkOrder, text: str, *, key: str, purpose: str = "notice"
    ) -> None:
        """A one-off message in the thread (reminders, escalations, quiet-order notes)."""
        await self.post_once(order, key=key, purpose=purpose, text=text, blocks=sections(text))

    async def _upload_once(
        self,
        where: WorkOrder | Thread,
        result: RunResult | None = None,
        *,
        file: UploadFile | None = None,
    ) -> str:
        """Upload the deliverable as a file once (or, with `file`, another file: one handed in
        with it, the arguments of a long approval request, a long chat answer); its id."""
        thread = Thread.of(where)
        if file is None:
            assert result is not None and isinstance(where, WorkOrder)
            order = where
            assert order.id
            file = UploadFile(
                key=result.key,
                purpose="result",
                content=result.content,
                filename=deliverable_filename(order.id, result.key),
                title=f"{order.id}: {order.title}"[:250],
                comment=truncate(f"*{order.id} deliverable:* {untrusted(result.summary)}", 3000),
            )
        state, existing = await self.store.slack.claim_slack_message(
            key=file.key,
            purpose=file.purpose,
            channel=thread.channel,
            owner=self.owner,
            order=thread.order,
            claim_s=POST_CLAIM_S,
        )
        if state == "posted":
            return existing.ts or ""
        if state == "busy":
            raise Busy(BUSY_RETRY_S, f"another process is uploading {file.key}")
        if state == "retaken":  # an earlier upload's outcome is unknown: look before uploading
            name = file.filename
            found = await self._look_for(thread, file.key, lambda m: _has_file(m, name))
            if found is not None:
                await self.store.slack.save_slack_message(
                    key=file.key, purpose=file.purpose, channel=thread.channel, ts=found,
                    order=thread.order,
                )  # fmt: skip
                return found
        try:
            file_id = await upload(self.client, channel=thread.channel, thread_ts=thread.ts, file=file)
        except BaseException as exc:
            await self._after_failed_post(file.key, exc)
            raise
        await self.store.slack.save_slack_message(
            key=file.key, purpose=file.purpose, channel=thread.channel, ts=file_id, order=thread.order
        )
        return file_id

    async def _after_failed_post(self, key: str, exc: BaseException) -> None:
        """Keep the key's claim honest: refused (Slack said no, or 429) means not posted; a
        5xx, a timeout or a dropped connection means maybe, and the next try looks first."""
        if isinstance(exc, SlackApiError) and not _maybe_done(exc):
            await self.store.slack.release_slack_message(key, self.owner)
            _raise_retry_later(exc)
            return
        await self.store.slack.uncertain_slack_message(key, self.owner)
        if isinstance(exc, SlackApiError):
            _raise_retry_later(exc)

    # Posting

    async def _show_status(self, order: WorkOrder, step: str, spend: str) -> None:
        assert order.id and order.channel
        current = Status((await self.store.orders.get_row(order.id)).status)
        if current is not order.status and current not in IN_FLIGHT:
            # Built from an older state (a late retry) while the order rests in a newer one
            # (awaiting review, approved, exception...): what came after it stays on show. While
            # the engine holds the order, the next update corrects a late one anyway.
            log.info(
                "skipped a stale status update (%s; the order is %s now)",
                order.status.value,
                current.value,
                extra={"order": order.id},
            )
            return
        label = STATE_LABELS[order.status]
        text = f"*{order.id}* · {label} · {step}"
        blocks: list[Block] = [*sections(text)]
        if spend:
            blocks.append(context(spend))
        if order.status in ACTIVE:
            blocks.append(
                {
                    "type": "actions",
                    "block_id": "run_controls",
                    "elements": [button("Cancel", CANCEL_ACTION, order.id, style="danger")],
                }
            )
        # The thread's agent session says where the order stands (nothing where Slack does
        # not offer sessions); a run's steps stream as a live plan where Slack streams.
        session = SESSION_OF.get(order.status)
        session_set = await set_session(self.client, order, session) if session else False
        plan = _PLAN.get()
        shown = False
        if plan is not None and session is not None:
            final = blocks
            if plan.get("phase") != RUN and order.status is Status.AWAITING_REVIEW:
                final = [*blocks, *await self._review_actions(order)]
            shown = await self.live.show(order, plan, blocks=final, session_status=session)
        if not shown:
            try:
                await self._put_status(order, status_key(order.id), text, blocks)
            except SlackApiError as exc:
                _raise_retry_later(exc)
                raise  # the deliverer keeps the status row and tries again (no run waits for it)
        self._changed(order)
        if session_set is None:
            # Shown, but the session is still to be set: the row goes round again (what it
            # shows is edited in place, so the thread sees nothing twice).
            raise RetryLater(5.0, "the agent session status is still to be set")

    async def _review_actions(self, order: WorkOrder) -> list[Block]:
        """The review buttons of the latest deliverable, for the end of a run's live plan."""
        assert order.id
        deliverables = await self.store.runs.deliverables(order.id)
        if not deliverables:
            return []
        return [review_actions(review_value(order.id, deliverables[-1].id))]

    async def _put_status(self, order: WorkOrder, key: str, text: str, blocks: list[Block]) -> None:
        """Edit the order's status message in place: post it first if there is none yet, and
        again if it was deleted in Slack (workspace admins can delete the bot's messages)."""
        stored = await self.store.slack.slack_message(key)
        posted = (stored.channel, stored.ts) if stored is not None and stored.ts else None
        for _ in range(2):
            if posted is None:
                channel, ts, fresh = await self._post(
                    order, key=key, purpose="status", text=text, blocks=blocks
                )
                if fresh:
                    return  # posted with this text
                posted = (channel, ts)  # posted meanwhile by someone else: edit it
            channel, ts = posted
            try:
                await self.client.chat_update(channel=channel, ts=ts, text=text, blocks=blocks)
            except SlackApiError as exc:
                if exc.response.get("error") != "message_not_found":
                    raise
                log.info(
                    "the status message was deleted; posting it again", extra={"order": order.id}
                )
                await self.store.slack.forget_slack_message(key, ts)
                posted = None
                continue
            # Touch the record: the sweep reads it as the order's last sign of life.
            await self.store.slack.save_slack_message(
                key=key, purpose="status", channel=channel, ts=ts, order=order.id
            )
            return

    def _changed(self, order: WorkOrder) -> None:
        """The order's state or spend changed: refresh the App Homes that show it."""
        if self.home is not None:
            self.home.order_changed(order)

    async def post_once(
        self, where: WorkOrder | Thread, *, key: str, purpose: str, text: str, blocks: list[Block]
    ) -> str:
        """Post into the order's thread unless this key was posted before; returns the ts."""
        _, ts, _ = await self._post(where, key=key, purpose=purpose, text=text, blocks=blocks)
        return ts

    async def _post(
        self, where: WorkOrder | Thread, *, key: str, purpose: str, text: str, blocks: list[Block]
    ) -> tuple[str, str, bool]:
        """`post_once`'s message as (channel, ts, whether this call posted `text`): False when
        it was posted before, as the claim's own fresh read of the record says."""
        thread = Thread.of(where)
        state, existing = await self.store.slack.claim_slack_message(
            key=key,
            purpose=purpose,
            channel=thread.channel,
            owner=self.owner,
            order=thread.order,
            claim_s=POST_CLAIM_S,
        )
        if state == "posted":
            return existing.channel, existing.ts or "", False
        if state == "busy":
            raise Busy(BUSY_RETRY_S, f"another process is posting {key}")
        if state == "retaken":
            # Its claimer died, or Slack's answer to its post was lost: it may be there.
            found = await self._look_for(thread, key, lambda m: _has_key(m, key))
            if found:
                await self.store.slack.save_slack_message(
                    key=key, purpose=purpose, channel=thread.channel, ts=found, order=thread.order
                )
                return thread.channel, found, False
        try:
            response = await self.client.chat_postMessage(
                channel=thread.channel,
                thread_ts=thread.ts,
                text=truncate(text, MESSAGE_TEXT_MAX),
                blocks=cap_blocks(blocks),
                metadata={"event_type": METADATA_EVENT, "event_payload": {"key": key}},
            )
        except BaseException as exc:
            await self._after_failed_post(key, exc)
            raise
        ts = str(response["ts"])
        await self.store.slack.save_slack_message(
            key=key, purpose=purpose, channel=str(response["channel"]), ts=ts, order=thread.order
        )
        return str(response["channel"]), ts, True

    async def _look_for(
        self, thread: Thread, key: str, match: Callable[[dict[str, Any]], bool]
    ) -> str | None:
        """The ts (or file id) of the message in the order's thread that `match` recognises,
        None when the whole thread was read and it is not there. A failed lookup leaves the key
        uncertain and raises, so the deliverer tries again later: answering it by posting is
        what makes duplicates."""
        if not thread.ts:
            return None
        cursor: str | None = None
        while True:
            try:
                response = await self.client.conversations_replies(
                    channel=thread.channel,
                    ts=thread.ts,
                    include_all_metadata=True,
                    limit=200,
                    cursor=cursor,
                )
            except SlackApiError as exc:
                if exc.response.get("error") == "thread_not_found":
                    return None
                await self.store.slack.uncertain_slack_message(key, self.owner)
                raise LookupFailed(key) from exc
            except Exception as exc:
                await self.store.slack.uncertain_slack_message(key, self.owner)
                raise LookupFailed(key) from exc
            messages: list[dict[str, Any]] = response.get("messages", [])
            for message in messages:
                if match(message):
                    return _found_id(message)
            cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
            if not cursor:
                return None


def exception_blocks(
    order: WorkOrder, kind: ExceptionKind, message: str, spend: Spend
) -> tuple[str, list[Block]]:
    """An exception notice (its text, and its blocks with the Extend/Retry/Cancel buttons)."""
    assert order.id
    people = {order.escalation_contact, order.requester} - {None}
    title = EXCEPTION_TITLES.get(kind, "The run stopped")
    body = (
        f"{' '.join(mention(p) for p in sorted(people, key=str))} *{order.id}: {title}.*\n"
        f"{untrusted(message)}\nSpend so far: {spend.describe()}."
    )
    controls = {
        "type": "actions",
        "block_id": "exception_controls",
        "elements": [
            button("Extend budget +50 %", EXTEND_ACTION, order.id, style="primary"),
            button("Extend…", EXTEND_CUSTOM_ACTION, order.id),
            button("Retry", RETRY_ACTION, order.id),
            button("Cancel", EXCEPTION_CANCEL_ACTION, order.id, style="danger"),
        ],
    }
    return body, [*sections(body), controls]


def exception_decision_line(decision: ExceptionDecision) -> str:
    """What an exception notice says in place of its buttons once someone has acted on it."""
    who = mention(decision.actor)
    if decision.action == "extend":
        budget = decision.budget.describe() if decision.budget is not None else "more"
        return f"Budget extended to {budget} by {who}; resuming from the last checkpoint."
    if decision.action == "retry":
        return f"Retried by {who}; resuming from the last checkpoint."
    return f"Cancelled by {who}."


def deliverable_filename(order_id: str, key: str) -> str:
    """A deliverable's file name, unique per deliverable so that a lost upload can be found."""
    number = deliverable_of(key)
    suffix = f"-{number}" if number is not None else ""
    return f"{order_id}-deliverable{suffix}.md"


def _has_key(message: dict[str, Any], key: str) -> bool:
    metadata: dict[str, Any] = message.get("metadata") or {}
    return (
        metadata.get("event_type") == METADATA_EVENT
        and (metadata.get("event_payload") or {}).get("key") == key
    )


def _has_file(message: dict[str, Any], filename: str) -> bool:
    return any(f.get("name") == filename for f in message.get("files") or [])


def _found_id(message: dict[str, Any]) -> str:
    files = message.get("files") or []
    return str(files[0]["id"]) if files and files[0].get("id") else str(message["ts"])


def _maybe_done(exc: SlackApiError) -> bool:
    """A server error may come after Slack carried the call out."""
    return exc.response.status_code >= 500


def _raise_retry_later(exc: SlackApiError) -> None:
    """Rate limits that outlasted the client's own retries go back to the outbox to retry later."""
    if exc.response.status_code == 429:
        after = float(
            exc.response.headers.get("Retry-After", exc.response.headers.get("retry-after", 5)) or 5
        )
        raise RetryLater(after_s=after) from exc
