"""App Home: the bot's tab in Slack, one view per person, built from `workers.store.reporting.home`.

- Everyone: a button to start a work order, and their own orders (open first, then recent) with
  state, spend and a link to each thread.
- Reviewers: the orders awaiting their decision, with the thread's Approve / Request changes /
  Reject buttons (same action ids, so the same handlers and rules in bot/decisions.py).
- Leads (`teams.<name>.leads`): the team's figures for the current ISO week and the digest's
  chart of the last eight complete weeks. The chart is uploaded once per team and week
  (`files.uploadV2`, shared nowhere) and its file id kept in `slack_messages`; the image block
  refers to it with `slack_file`. If Slack refuses the view with the image, it is published
  without it, and the figures and a link to the latest digest still show.

`HomePublisher.publish` builds and publishes one person's view; bot.home_refresh decides when.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.blocks import Block, button, cap_blocks, context, fields, header, plain, sections
from bot.cards import mention, state_label
from bot.delivery import fix_for
from bot.ids import (
    APPROVE_ACTION,
    CHANGES_ACTION,
    NEW_ORDER_ACTION,
    REJECT_ACTION,
    review_value,
)
from bot.mrkdwn import escape, untrusted
from bot.review_blocks import checklist
from workers.config import Settings
from workers.digest import CHART_WEEKS, Digest, figure_rows, headlines, money, plural
from workers.store import Store
from workers.store.reporting import metrics
from workers.store.reporting.home import (
    HomeData,
    LeadFigures,
    Listing,
    NotDelivered,
    OrderLine,
    team_timezone,
)
from workers.store.reporting.metrics import Period, WeekPoint
from workers.workorder import WorkOrder

log = logging.getLogger(__name__)

HOME_BLOCKS_MAX = 100
HOME_KEY = "home:{user}"
CHART_KEY = "home-chart:{team}:{week}"

ChartRenderer = Callable[[Sequence[WeekPoint], str], bytes]


def thread_url(team_url: str | None, order: WorkOrder) -> str | None:
    """The address of the order's thread, when the workspace URL is known."""
    if not (team_url and order.channel and order.thread_ts):
        return None
    return f"{team_url.rstrip('/')}/archives/{order.channel}/p{order.thread_ts.replace('.', '')}"


def thread_link(team_url: str | None, order: WorkOrder) -> str:
    """The order id, linked to its thread when the workspace URL is known."""
    url = thread_url(team_url, order)
    return f"*<{url}|{order.id}>*" if url else f"*{order.id}*"


class WorkspaceUrl:
    """The workspace URL (auth.test), asked once per process and kept, for links to threads."""

    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client
        self._url: str | None = None

    async def get(self) -> str | None:
        if self._url is None:
            try:
                response = await self.client.auth_test()
            except SlackApiError as exc:
                log.info("auth.test failed (%s); links to threads left out", exc.response.get("error"))
                return None
            self._url = str(response.get("url") or "") or None
        return self._url


def message_link(team_url: str | None, channel: str, ts: str, label: str) -> str:
    if not team_url:
        return label
    return f"<{team_url.rstrip('/')}/archives/{channel}/p{ts.replace('.', '')}|{label}>"


def _spend(line: OrderLine) -> str:
    return f"spent {money(line.spent_micro_usd)} of ${line.order.budget.max_usd:,.2f}"


def _feedback(line: OrderLine) -> str:
    return f" · {line.feedback.label}" if line.feedback is not None else ""


def _more(listing: Listing, what: str) -> list[Block]:
    return [context(f"_…and {listing.more} more {what}._")] if listing.more else []


def _review_blocks(reviews: Listing, team_url: str | None) -> list[Block]:
    blocks: list[Block] = [
        {"type": "divider"},
        *sections(f"*Awaiting your review* ({reviews.total})"),
    ]
    for line in reviews.items:
        order = line.order
        assert order.id
        item = line.deliverable
        # The buttons name the deliverable shown, as the thread's do: a click on a Home
        # published before a rework is refused instead of deciding on the newer version.
        value = review_value(order.id, item.id if item else None)
        shown = ""
        if item is not None:
            shown = f"\n*Deliverable:* {untrusted(item.summary)}"
            if item.verdicts is not None:
                shown += "\n" + checklist(item.verdicts, order.acceptance_criteria)
        blocks += sections(
            f"{thread_link(team_url, order)} · {escape(order.title)}\n"
            f"Requested by {mention(order.requester)} · {_spend(line)}{_feedback(line)}{shown}"
        )
        blocks.append(
            {
                "type": "actions",
                "block_id": f"home_review_{order.id}",
                "elements": [
                    button("Approve", APPROVE_ACTION, value, style="primary"),
                    button("Request changes", CHANGES_ACTION, value),
                    button("Reject", REJECT_ACTION, value, style="danger"),
                ],
            }
        )
    return blocks + _more(reviews, "awaiting your review")


def _not_delivered_blocks(items: list[NotDelivered]) -> list[Block]:
    """Messages Slack refused for good: said here, where the requester looks, with the fix."""
    blocks: list[Block] = [{"type": "divider"}, *sections("*Not delivered to your threads*")]
    for item in items:
        blocks.append(
            context(
                f"{_where(item)} · its {escape(_KIND_WORDS.get(item.kind, item.kind))} message · "
                f"`{escape(item.error)}`: {escape(fix_for(item.error))}"
            )
        )
    return blocks


# The outbox kinds whose names are not words a requester knows.
_KIND_WORDS = {
    "intake_questions": "questions",
    "intake_answer": "answer",
    "intake_notice": "reply",
    "card_shown": "card",
    "exception_decided": "exception",
    "approval_decided": "approval",
}


def _where(item: NotDelivered) -> str:
    if item.order_id:
        return escape(item.order_id)
    return f"Your request in <#{item.channel}>" if item.channel else "Your request"


@dataclass(frozen=True)
class Guide:
    """What the getting-started section names: who to ask, and where to read more."""

    admins: tuple[str, ...] = ()
    docs_url: str | None = None

    @classmethod
    def of(cls, settings: Settings) -> Guide:
        return cls(tuple(settings.admins), settings.slack.docs_url)


EXAMPLE_REQUESTS = (
    "pull last quarter's churn numbers into a one-pager",
    "compare the pricing pages of our three main competitors, with sources",
    "draft release notes from the merged changes in this thread",
)


def getting_started(guide: Guide) -> list[Block]:
    """For someone who has never delegated: what to ask, what happens, who decides, who helps."""
    examples = "\n".join(f"• _@Delegate {e}_" for e in EXAMPLE_REQUESTS)
    admins = (
        ", ".join(mention(a) for a in guide.admins)
        if guide.admins
        else "none are configured yet: ask whoever installed Delegate"
    )
    more = (
        f"<{guide.docs_url}|Read the guide> · " if guide.docs_url else ""
    ) + "`/delegate help` lists the commands."
    return [
        {"type": "divider"},
        *sections("*Getting started*"),
        *sections(
            "*What to ask.* Anything you would hand to a colleague, with what \"done\" looks "
            f"like. Mention me in a channel, DM me, or press *New work order*:\n{examples}"
        ),
        *sections(
            "*What happens.* I ask what I need to know, then show you a work order: the goal, "
            "the deliverable, how it will be checked, a budget and what it may touch. Nothing "
            "runs until you press *Start*. You can cancel at any time."
        ),
        *sections(
            "*How approval works.* The result comes back to the thread, checked against its "
            "criteria, and its reviewer (you, unless you name someone, or the channel's "
            "reviewers) approves it, sends it back with changes, or rejects it. A step that "
            "needs permission (a new website, a tool that changes things) asks in the thread first."
        ),
        context(f"Admins: {admins}. {more}"),
    ]


def _order_blocks(orders: Listing, team_url: str | None) -> list[Block]:
    blocks: list[Block] = [{"type": "divider"}]
    if not orders.items:
        blocks.append(
            context("No work orders yet. Mention me in a channel, DM me, or press the button.")
        )
        return blocks
    blocks += sections("*Your work orders*")
    for line in orders.items:
        order = line.order
        blocks.append(
            context(
                f"{thread_link(team_url, order)} · {escape(order.title)} · "
                f"{state_label(order)} · {_spend(line)}{_feedback(line)}"
            )
        )
    return blocks + _more(orders, "(`/delegate list` shows the open ones)")


def _team_blocks(
    figures: LeadFigures, team_url: str | None, chart: tuple[str, str] | None
) -> list[Block]:
    digest = Digest(
        figures.team,
        figures.comparison,
        calibration=figures.calibration,
        previous_calibration=figures.previous_calibration,
    )
    who = "the whole workspace" if figures.team == metrics.ALL else f"team {figures.team}"
    blocks: list[Block] = [
        {"type": "divider"},
        header(f"This week for {who}"),
        *sections("\n".join(f"• {line}" for line in headlines(digest))),
    ]
    if not digest.current.is_empty:
        pairs = [
            (label, f"{this}  _(last week {last})_") for label, this, last in figure_rows(digest)
        ]
        for start in range(0, len(pairs), 10):
            blocks.append(fields(pairs[start : start + 10]))
    if chart is not None:
        file_id, title = chart
        blocks.append(
            {
                "type": "image",
                "slack_file": {"id": file_id},
                "alt_text": title,
                "title": plain(title, 2000, emoji=False),
            }
        )
    notes = [f"{escape(digest.week.label)} so far ({escape(digest.week.timezone)})"]
    if figures.last_digest is not None:
        link = figures.last_digest
        notes.append(
            "latest digest: " + message_link(team_url, link.channel, link.ts, escape(link.week))
        )
    blocks.append(context(" · ".join(notes)))
    return blocks


def home_view(
    data: HomeData,
    *,
    team_url: str | None = None,
    charts: dict[str, tuple[str, str]] | None = None,
    guide: Guide | None = None,
) -> dict[str, Any]:
    """The whole Home tab for `data.user`; `charts` maps a team to (file id, title). Someone
    with no orders and nothing to review is shown how to begin (`guide`)."""
    blocks: list[Block] = [
        header("Delegate"),
        *sections(
            "Hand off a task: I'll clarify it, run it on a budget, and bring it back verified."
        ),
        {
            "type": "actions",
            "elements": [button("New work order", NEW_ORDER_ACTION, "new", style="primary")],
        },
    ]
    if data.not_delivered:
        blocks += _not_delivered_blocks(data.not_delivered)
    if data.reviews.total:
        blocks += _review_blocks(data.reviews, team_url)
    if not data.orders.total and not data.reviews.total:
        blocks += getting_started(guide or Guide())
    else:
        blocks += _order_blocks(data.orders, team_url)
    for figures in data.teams:
        blocks += _team_blocks(figures, team_url, (charts or {}).get(figures.team))
    if data.more_teams:
        blocks.append(
            context(f"_…and {plural(data.more_teams, 'more team')}: see `delegate digest`._")
        )
    return {"type": "home", "blocks": cap_blocks(blocks, HOME_BLOCKS_MAX)}


class HomePublisher:
    """Builds a person's App Home from the database and publishes it."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        client: AsyncWebClient,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        render_chart: ChartRenderer | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self.clock = clock
        if render_chart is None:
            from workers.chart import render_chart as default_renderer

            render_chart = default_renderer
        self.render_chart = render_chart
        self._workspace = WorkspaceUrl(client)
        self._chart_locks: dict[str, asyncio.Lock] = {}

    async def opened(self, user: str) -> None:
        """Remember that `user` has a Home tab, so that changes to their orders refresh it."""
        await self.store.slack.save_slack_message(
            key=HOME_KEY.format(user=user), purpose="home", channel=user, ts="opened"
        )

    async def has_home(self, user: str) -> bool:
        return await self.store.slack.slack_message(HOME_KEY.format(user=user)) is not None

    async def refresh(self, user: str) -> None:
        """Republish `user`'s home if they have ever opened it (views.publish is rate limited)."""
        if await self.has_home(user):
            await self.publish(user)

    async def publish(self, user: str) -> None:
        data = await self.store.reporting.home(self.settings, user, now=self.clock())
        team_url = await self.team_url()
        charts: dict[str, tuple[str, str]] = {}
        for figures in data.teams:
            chart = await self.chart(figures.team)
            if chart is not None:
                charts[figures.team] = chart
        try:
            await self.client.views_publish(
                user_id=user,
                view=home_view(data, team_url=team_url, charts=charts, guide=Guide.of(self.settings)),
            )
        except SlackApiError as exc:
            if not charts or exc.response.get("error") not in (
                "invalid_arguments",
                "invalid_blocks",
            ):
                raise
            # A chart Slack will not show (not processed yet, or not visible): go without it.
            log.warning("App Home refused the chart (%s); publishing without it", exc.response)
            await self.client.views_publish(
                user_id=user, view=home_view(data, team_url=team_url, guide=Guide.of(self.settings))
            )

    async def team_url(self) -> str | None:
        return await self._workspace.get()

    async def chart(self, team: str) -> tuple[str, str] | None:
        """(file id, title) of the team's chart for the last complete week, uploaded once."""
        week = Period.last_complete_week(self.clock(), team_timezone(self.settings, team))
        title = f"Finished outcomes and cost per outcome, {CHART_WEEKS} weeks to {week.label}"
        key = CHART_KEY.format(team=team, week=week.label)
        async with self._chart_locks.setdefault(key, asyncio.Lock()):
            saved = await self.store.slack.slack_message(key)
            if saved is not None and saved.ts:
                return saved.ts, title
            try:
                series = await self.store.reporting.weekly_series(
                    team, week.weeks_back(CHART_WEEKS)
                )
                png = await asyncio.to_thread(self.render_chart, series, title)
                response = await self.client.files_upload_v2(
                    content=png, filename=f"home-{team}-{week.label}.png", title=title
                )
            except Exception:
                log.exception("App Home chart for %s could not be made; showing figures only", team)
                return None
            file_id = str((response.get("files") or [{}])[0].get("id") or "")
            if not file_id:
                return None
            await self.store.slack.save_slack_message(
                key=key, purpose="home_chart", channel="", ts=file_id
            )
            return file_id, title
