"""Block Kit for review prompts and exceptions: the prompt, its buttons, and the decided state."""

from __future__ import annotations

from datetime import datetime

from bot.blocks import Block, button, context, sections, slack_date, truncate
from bot.cards import mention
from bot.feedback import feedback_block
from bot.ids import APPROVE_ACTION, CHANGES_ACTION, REJECT_ACTION, review_value
from bot.mrkdwn import untrusted
from workers.keys import deliverable_of
from workers.permissions import reviewers_of
from workers.progress import RunResult
from workers.workorder import WorkOrder

# The summary shares the prompt with its buttons; a longer one (stored before submit_deliverable
# limited it) is cut here.
SUMMARY_SHOWN_MAX = 1_000
DECISION_WORDS = {"approve": "Approved", "reject": "Rejected", "changes": "Changes requested"}


def decision_word(decision: str, *, self_approved: bool = False) -> str:
    """How a decision reads on its prompt: an approval by the order's own requester says so."""
    return "Self-approved" if decision == "approve" and self_approved else DECISION_WORDS[decision]


def checklist(verdicts: list[dict[str, object]] | None, criteria: list[str]) -> str:
    """Criteria (drafted by a model) and the verifier's reasons, inert in mrkdwn."""
    if verdicts is None:
        return "\n".join(f"☐ {untrusted(c)}" for c in criteria)
    return "\n".join(
        f"{'✅' if v.get('passed') else '❌'} {untrusted(str(v.get('criterion')))}: "
        f"_{untrusted(str(v.get('reason')))}_"
        for v in verdicts
    )


def review_blocks(
    order: WorkOrder, result: RunResult, *, canvas_url: str | None = None
) -> list[Block]:
    assert order.id
    verdicts = result.verdicts
    failed = [v for v in verdicts or [] if not v.get("passed")]
    if verdicts is None:
        headline = result.note or "Automatic checks are off for this order."
    elif failed:
        headline = f"Automatic checks: {len(failed)} of {len(verdicts)} criteria *not met*. Please look closely."
    else:
        headline = f"Automatic checks: all {len(verdicts)} criteria met."
    reviewers = " ".join(mention(r) for r in reviewers_of(order))
    # The buttons are bound to this deliverable: a click after a newer one is refused.
    value = review_value(order.id, deliverable_of(result.key))
    blocks: list[Block] = [
        *sections(
            f"{reviewers} *{order.id}* is ready for your review: "
            f"{untrusted(truncate(result.summary, SUMMARY_SHOWN_MAX, '…'))}"
            f"\n{headline}"
        ),
        *sections(f"*Acceptance criteria*\n{checklist(verdicts, order.acceptance_criteria)}"),
    ]
    if canvas_url:
        blocks.extend(sections(f"*Deliverable:* <{canvas_url}|open the canvas>"))
    if result.files:
        blocks.extend(sections(f"*Files handed in*\n{files_list(result.files)}"))
    if result.spend is not None:
        blocks.append(context(f"Spend and time: {result.spend.describe()}"))
    blocks.append(review_actions(value))
    # Anyone who sees the deliverable may rate it; the buttons stay once it is decided.
    blocks.append(feedback_block(order.id))
    return blocks


def review_actions(value: str) -> Block:
    """The review buttons for one deliverable (`value`: bot.ids.review_value)."""
    return {
        "type": "actions",
        "block_id": "review_controls",
        "elements": [
            button("Approve", APPROVE_ACTION, value, style="primary"),
            button("Request changes", CHANGES_ACTION, value),
            button("Reject", REJECT_ACTION, value, style="danger"),
        ],
    }


def files_list(files: list[dict[str, object]]) -> str:
    """The handed-in files by name and size (names are the model's words: inert)."""
    return "\n".join(
        f"• {untrusted(str(f.get('name', '')))} ({human_size(int(str(f.get('size') or 0)))})"
        for f in files
    )


def human_size(size: int) -> str:
    if size < 1000:
        return f"{size} bytes"
    if size < 1_000_000:
        return f"{size / 1000:.1f} kB"
    return f"{size / 1_000_000:.1f} MB"


def decided_blocks(blocks: list[Block], *, line: str) -> list[Block]:
    """The same message with its buttons replaced by who did what, and when."""
    kept = [b for b in blocks if b.get("type") != "actions"]
    return [*kept, context(line)]


def decision_line(verb: str, user: str, at: datetime, detail: str = "") -> str:
    """Who decided and when; `detail` is the reviewer's own words, shown inert."""
    when = slack_date(int(at.timestamp()), at.strftime("%Y-%m-%d %H:%M UTC"))
    return f"*{verb}* by {mention(user)} {when}" + (f": {untrusted(detail)}" if detail else "")
