"""Every renderer in bot/ shows outside text inert (issue 19, item 4).

Each renderer gets hostile strings in every field that can come from a model, a fetched page, a
tool or a person's free text, and no field of its output may carry a live broadcast, group,
person or channel mention or a disguised link. Only fields Slack shows verbatim are exempt:
plain_text objects, and input values that must round-trip as the person typed them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from bot.approval_blocks import approval_request_blocks, approval_request_text, decided_line
from bot.blocks import markdown_blocks
from bot.cards import card_text, render_card
from bot.digest_blocks import digest_blocks, digest_text
from bot.domain_blocks import answered_line, domain_request_blocks, domain_request_text
from bot.feedback import feedback_block
from bot.home import home_view
from bot.live_plan import task_chunks
from bot.messages import HELP
from bot.modals import changes_modal, edit_modal, extend_modal, intake_modal
from bot.mrkdwn import mention, untrusted, untrusted_markdown
from bot.review_blocks import decided_blocks, decision_line, review_blocks
from tests.support.factories import make_order
from tests.support.inert import live_fields
from workers.config import Settings
from workers.digest import Digest
from workers.progress import ApprovalRequest, DomainRequest, RunResult
from workers.store.reporting.calibration import (
    Calibration,
    FeedbackCount,
    RouteAgreement,
    VerifierCalibration,
)
from workers.store.reporting.home import HomeData, Listing, OrderLine
from workers.store.reporting.metrics import Comparison, Period, PersonCount, TeamMetrics
from workers.workorder import Status, Verification, WorkOrder

HOSTILE_TOKENS = [
    "<!channel>",
    "<!here>",
    "<!everyone>",
    "<!subteam^S1|@eng>",
    "<@U123>",
    "<#C1>",
    "<http://evil|safe>",
]
HOSTILE = "Urgent " + " ".join(HOSTILE_TOKENS) + " end"


def hostile_order(**overrides: Any) -> WorkOrder:
    fields: dict[str, Any] = {
        "id": "WO-7",
        "title": HOSTILE,
        "goal": HOSTILE,
        "deliverable": HOSTILE,
        "acceptance_criteria": [HOSTILE, HOSTILE],
        "context": HOSTILE,
        # Ids no code path should produce, in case one ever does: shown inert, not live.
        "verification": Verification(reviewers=["U123> <!channel"]),
        "escalation_contact": "<!here>",
        "status": Status.AWAITING_CONFIRMATION,
    }
    fields.update(overrides)
    return make_order(**fields)


def hostile_result() -> RunResult:
    return RunResult(
        content=HOSTILE,
        summary=HOSTILE,
        key="WO-7:result:1",
        verdicts=[{"criterion": HOSTILE, "passed": False, "reason": HOSTILE}],
        note=HOSTILE,
    )


def hostile_digest() -> Digest:
    period = Period.iso_week("2026-W49")
    people = [PersonCount(user=HOSTILE, count=2, finished=1), PersonCount(user="U5", count=1)]
    current = TeamMetrics(
        team=HOSTILE,
        period=period,
        requests_received=3,
        top_requesters=people,
        top_reviewers=people,
        spend_by_role={HOSTILE: 1_000_000},
    )
    return Digest(HOSTILE, Comparison(current, TeamMetrics(team=HOSTILE, period=period)))


def hostile_calibrated_digest() -> Digest:
    """The calibration lines name routes and classes (config and provider names, but shown as
    outside text all the same)."""
    digest = hostile_digest()
    found = Calibration(
        HOSTILE,
        digest.week,
        VerifierCalibration(2, 1, 1, 0, [RouteAgreement(HOSTILE, HOSTILE, 2, 1, 1, 0)]),
        feedback=[FeedbackCount(HOSTILE, HOSTILE, 1, 1)],
    )
    return Digest(digest.team, digest.comparison, calibration=found, previous_calibration=found)


def renderers(settings: Settings) -> dict[str, Callable[[], Any]]:
    order = hostile_order()
    review = hostile_order(status=Status.AWAITING_REVIEW)
    request = DomainRequest(approval_id=1, host=HOSTILE, url=f"http://{HOSTILE}/x", reason=HOSTILE)
    call = ApprovalRequest(
        approval_id=2,
        kind="tool",
        tool=HOSTILE,
        server=HOSTILE,
        arguments=json.dumps({"q": HOSTILE + "```" + HOSTILE}),
        arguments_sha256="0" * 64,
        arguments_chars=10_000,
        reason=HOSTILE,
        decision="deny",
        decided_by=HOSTILE,
    )
    at = datetime(2026, 12, 1, tzinfo=UTC)
    lines = Listing(items=[OrderLine(order, 0), OrderLine(review, 10)], total=2)
    return {
        "card": lambda: render_card(order, settings, open_points=[HOSTILE]),
        "card fallback text": lambda: card_text(order),
        "review prompt": lambda: review_blocks(review, hostile_result()),
        "decided review": lambda: decided_blocks(
            review_blocks(review, hostile_result()),
            line=decision_line("Changes requested", "U7", at, HOSTILE),
        ),
        "decision line by a bad id": lambda: decision_line("Approved", HOSTILE, at),
        "domain request text": lambda: domain_request_text(order, request),
        "domain request blocks": lambda: domain_request_blocks(order, request),
        "domain answered": lambda: answered_line("order", HOSTILE, "U7"),
        "approval request text": lambda: approval_request_text(order, call, [HOSTILE, "U1"]),
        "approval request blocks": lambda: approval_request_blocks(order, call, [HOSTILE]),
        "approval answered": lambda: decided_line(call),
        "digest text": lambda: digest_text(hostile_digest()),
        "digest blocks": lambda: digest_blocks(hostile_digest()),
        "digest blocks with calibration": lambda: digest_blocks(hostile_calibrated_digest()),
        "feedback buttons": lambda: feedback_block("WO-7"),
        "home": lambda: home_view(HomeData(user="U1", orders=lines, reviews=lines)),
        "edit modal": lambda: edit_modal(order, settings, metadata={"order_id": "WO-7"}),
        "edit modal for an admin": lambda: edit_modal(
            order, settings, metadata={"order_id": "WO-7"}, user="UADMIN"
        ),
        "changes modal": lambda: changes_modal(review),
        "extend modal": lambda: extend_modal(order, {"order_id": "WO-7"}, factor=2.0),
        "intake modal": lambda: intake_modal(initial_text=HOSTILE, metadata={"channel": "C1"}),
        "markdown deliverable": lambda: markdown_blocks(untrusted_markdown(HOSTILE)),
        "live plan tasks": lambda: task_chunks([{"id": "t1", "title": HOSTILE, "status": "error"}]),
        "help": lambda: HELP,
        "mention of a bad id": lambda: mention(HOSTILE),
    }


RENDERERS = list(renderers(Settings.model_construct()).keys())


@pytest.mark.parametrize("name", RENDERERS)
def test_no_renderer_lets_outside_text_ping_or_disguise_a_link(
    name: str, settings_factory: Callable[..., Settings]
) -> None:
    output = renderers(settings_factory(admins=["UADMIN"]))[name]()
    assert not list(live_fields(output)), name


def test_the_walker_sees_live_tokens() -> None:
    """The check above is only as good as its walker: raw hostile text must trip it."""
    assert list(live_fields({"blocks": [{"type": "mrkdwn", "text": HOSTILE}]}))
    assert list(live_fields({"text": HOSTILE}))
    assert not list(live_fields({"type": "plain_text", "text": HOSTILE}))
    assert not list(live_fields(untrusted(HOSTILE)))


def test_markdown_links_show_where_they_go() -> None:
    """A markdown block renders [label](target): a label that is not its target is shown with
    it, so no label hides where a link goes (the walker above looks for Slack's own syntax)."""
    shown = untrusted_markdown("See [your bank](https://evil.example/login) or [x](<https://a.b>)")
    assert shown == "See your bank (https://evil.example/login) or x (https://a.b)"
    assert untrusted_markdown("![chart](https://c.example/p.png)") == "chart (https://c.example/p.png)"
    table = "| a | b |\n|---|---|\n| 1 | 2 |"
    assert untrusted_markdown(table) == table, "tables render as they are"
