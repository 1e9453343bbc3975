"""`delegate review WO-42 approve|reject|changes [FEEDBACK] --user U`: a reviewer's decision
from a terminal, for orders confirmed with `delegate console`.

The same rules as the Slack buttons: who may decide is `workers.permissions.may_review`, and the
decision is `workers.review.decide`, bound to the latest deliverable. Orders requested in Slack
are decided on their review prompt there, where the thread shows the decision.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, get_args

from workers.config import Settings
from workers.errors import IllegalTransition, NotFound, OutdatedDecision
from workers.permissions import may_review, reviewers_of
from workers.review import Decision, decide
from workers.store import Store
from workers.workorder import Status, format_order_id

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

DONE = {
    "approve": "Approved {id}.",
    "reject": "Rejected {id}.",
    "changes": "Requested changes on {id}: it is queued for rework with your feedback "
    "(`delegate worker` runs it).",
}


def add_parser(sub: Any) -> None:
    review = sub.add_parser(
        "review",
        help="approve, reject or request changes on an order confirmed in the console",
        description="`delegate review WO-42 approve --user U` decides on the order's latest "
        "deliverable (see it with `delegate show WO-42`); `changes` needs FEEDBACK saying what "
        "should change, and sends the order back for rework.",
    )
    review.add_argument("order", metavar="WO-42", help="the order (WO-42, wo-42 or 42)")
    review.add_argument(
        "decision", choices=get_args(Decision), help="approve, reject, or request changes"
    )
    review.add_argument("feedback", nargs="?", default="", help="what should change, or why")
    review.add_argument(
        "--user", default="console", help="who decides (default: console, as in delegate console)"
    )


async def run(settings: Settings, args: argparse.Namespace) -> int:
    decision: Decision = args.decision
    feedback = " ".join(args.feedback.split()) if decision == "changes" else args.feedback.strip()
    try:
        from bot.cli import order_number  # bot.cli imports this module

        order_id = format_order_id(order_number(args.order))
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    if decision == "changes" and not feedback:
        return _fail("say what should change, so the rework can address it", EXIT_USAGE)
    store = Store.for_settings(settings)
    try:
        try:
            order = await store.orders.get_order(order_id)
        except NotFound:
            return _fail(f"there is no work order {order_id}")
        if order.channel is not None:
            return _fail(
                f"{order_id} was requested in Slack: decide it on its review prompt in the thread"
            )
        if not may_review(order, args.user, settings):
            return _fail(
                f"only the reviewer ({', '.join(reviewers_of(order))}) can decide {order_id}; "
                f"{args.user} cannot"
            )
        if order.status is not Status.AWAITING_REVIEW:
            return _fail(_not_in_review(order_id, order.status))
        deliverables = await store.runs.deliverables(order_id)
        try:
            decided = await decide(
                store,
                settings,
                order_id,
                decision,
                actor=args.user,
                feedback=feedback,
                deliverable_id=deliverables[-1].id if deliverables else None,
            )
        except IllegalTransition:
            return _fail(_not_in_review(order_id, (await store.orders.get_order(order_id)).status))
        except OutdatedDecision:
            return _fail(
                f"{order_id} has a newer deliverable than a moment ago; "
                f"read it with `delegate show {order_id}` and decide again"
            )
    finally:
        await store.close()
    if decided.waiting_for:
        print(
            f"Recorded your approval of {order_id}; it waits for one of the channel's reviewers "
            f"({', '.join(decided.waiting_for)})."
        )
    elif decided.order.self_approved:
        print(f"Approved {order_id} (self-approved: you are its requester).")
    else:
        print(DONE[decision].format(id=order_id))
    return EXIT_OK


def _not_in_review(order_id: str, status: Status) -> str:
    if status in (Status.APPROVED, Status.REJECTED):
        return f"{order_id} has already been decided ({status.value})"
    return f"{order_id} is {status.value.replace('_', ' ')}, not awaiting review"


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    print(f"delegate: {message}", file=sys.stderr)
    return code
