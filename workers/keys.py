"""Idempotency keys of the messages an order posts, each spelled in one place.

A key names one message for good: the reporter claims it in the database before posting, and a
run resumed after a crash (or a second sweep) finds it instead of posting again. The engine, the
follow-up sweep and the Slack layer all build keys here, so they always agree.
"""

from __future__ import annotations


def status_key(order_id: str) -> str:
    """The order's one status message, updated in place: 'WO-42:status'."""
    return f"{order_id}:status"


def card_key(order_id: str) -> str:
    """The work-order card in its thread: 'WO-42:card'."""
    return f"{order_id}:card"


def card_note_key(order_id: str, note: str) -> str:
    """The edit of the card that says who started or cancelled the order: 'WO-42:card:started',
    'WO-42:card:cancelled' (each happens once to an order); a review decision's redraw names
    what was decided: 'WO-42:card:decided:7:approve'."""
    return f"{card_key(order_id)}:{note}"


def card_shown_key(order_id: str, revision: str | int) -> str:
    """A (re)drawing of the card with the order as it stands: 'WO-42:card:shown:new' when the
    draft is proposed, then one revision per refinement or Edit."""
    return f"{card_key(order_id)}:shown:{revision}"


def intake_reply_key(session_id: int, reply_to: str) -> str:
    """What a dialogue says back to one of the requester's messages: 'intake-12:1733.0001'
    (that message's ts), so a message Slack delivers twice is answered once."""
    return f"intake-{session_id}:{reply_to}"


def result_key(order_id: str, deliverable_id: int | None) -> str:
    """A posted deliverable: 'WO-42:result:7' (7 is the stored deliverable's id)."""
    return f"{order_id}:result:{deliverable_id}"


def deliverable_of(result: str) -> int | None:
    """The stored deliverable's id in a result key: 'WO-42:result:7' -> 7."""
    tail = result.rpartition(":result:")[2]
    return int(tail) if tail.isascii() and tail.isdigit() else None


def review_key(result: str) -> str:
    """The review prompt that follows a deliverable: 'WO-42:result:7' -> 'WO-42:review:7'."""
    return result.replace(":result:", ":review:")


def decided_key(review: str) -> str:
    """The edit that shows the answer on a prompt: 'WO-42:review:7:decided' (a review),
    'WO-42:approval:3:decided' (an approval request), 'WO-42:exception:3:decided' (Extend,
    Retry or Cancel on an exception notice: one of them, once, per notice)."""
    return f"{review}:decided"


def file_key(result: str, position: int) -> str:
    """A file handed in with a deliverable: 'WO-42:result:7', 2 -> 'WO-42:file:7:2'."""
    return f"{result.replace(':result:', ':file:')}:{position}"


def canvas_key(result: str) -> str:
    """The canvas a long deliverable is put in: 'WO-42:result:7' -> 'WO-42:canvas:7'."""
    return result.replace(":result:", ":canvas:")


def question_key(order_id: str, tool_use_id: str) -> str:
    """A question the run asked the requester: 'WO-42:question:<tool use id>'."""
    return f"{order_id}:question:{tool_use_id}"


def domain_key(order_id: str, approval_id: int | None) -> str:
    """A request to read a domain outside the allowlist: 'WO-42:domain:3' (the approval's id)."""
    return f"{order_id}:domain:{approval_id}"


def exception_key(order_id: str, *which: str | int) -> str:
    """An exception notice, e.g. 'WO-42:exception:3' or 'WO-42:exception:quota:5'."""
    return ":".join([order_id, "exception", *(str(w) for w in which)])


def review_reminder_key(order_id: str, round_started: int) -> str:
    return f"{order_id}:review-reminder:{round_started}"


def review_escalation_key(order_id: str, round_started: int) -> str:
    return f"{order_id}:review-escalation:{round_started}"


def quiet_key(order_id: str, last_change: int) -> str:
    return f"{order_id}:quiet:{last_change}"


def deadline_key(order_id: str, which: str) -> str:
    """'missed' or 'risk': 'WO-42:deadline-missed'."""
    return f"{order_id}:deadline-{which}"


def approval_key(order_id: str, approval_id: int | None) -> str:
    """A request to allow a tool call: 'WO-42:approval:3' (the approval's id)."""
    return f"{order_id}:approval:{approval_id}"
