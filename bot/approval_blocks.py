"""Block Kit for a run's request to make a tool call its authority policy asks about: the tool,
its server and the arguments (inert, capped, with their digest), Allow once / Allow for this
order / Deny, and the answered state."""

from __future__ import annotations

import json

from bot.blocks import Block, button, context, sections
from bot.domain_blocks import DOMAIN_DECISION_WORDS, answered_line
from bot.ids import APPROVAL_DENY_ACTION, APPROVAL_ONCE_ACTION, APPROVAL_ORDER_ACTION
from bot.mrkdwn import mention, untrusted
from workers.progress import ApprovalRequest
from workers.workorder import WorkOrder

SHOWN_ARGUMENTS_CHARS = 2_000
"""The arguments shown in the prompt; the digest covers all of them."""


def shown_arguments(request: ApprovalRequest, order_id: str = "") -> str:
    """The arguments as a code block people can read, never as markup: Slack's control
    characters escaped, no mention or link live, backticks that could close the block replaced,
    and a note with the digest when they are cut."""
    text = request.arguments  # canonical JSON, as the digest covers it (capped when stored)
    cut = request.arguments_chars > SHOWN_ARGUMENTS_CHARS
    if cut:
        text = text[:SHOWN_ARGUMENTS_CHARS]
    else:  # all of it fits: indented for reading, if that fits too
        try:
            indented = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except ValueError:
            indented = text
        if len(indented) <= SHOWN_ARGUMENTS_CHARS:
            text = indented
    block = "```" + untrusted(text.replace("`", "'")) + ("\n…" if cut else "") + "```"
    digest = f"sha256 `{request.arguments_sha256}`"
    if cut:
        return (
            f"{block}\n_Truncated: {len(text):,} of {request.arguments_chars:,} characters "
            f"shown; all of them are in the file `{arguments_filename(order_id, request)}` above, "
            f"with {digest}._"
        )
    return f"{block}\n_Arguments {digest}._"


def arguments_filename(order_id: str, request: ApprovalRequest) -> str:
    """The file a long request's arguments are attached as (`SlackReporter.approval_request`)."""
    return f"{order_id}-request-{request.approval_id}-arguments.json"


def where(request: ApprovalRequest) -> str:
    tool = untrusted(request.tool.replace("`", "'"))
    if request.server:
        return f"`{tool}` on the MCP server `{untrusted(request.server)}`"
    return f"`{tool}`"


def approval_request_text(
    order: WorkOrder, request: ApprovalRequest, approvers: list[str] | None = None
) -> str:
    """The question; `approvers` are mentioned (None: the requester; empty: nobody, as on
    the answered prompt)."""
    asked = [order.requester] if approvers is None else approvers
    people = "".join(f"{mention(p)} " for p in dict.fromkeys(asked))
    why = f" ({untrusted(request.reason)})" if request.reason else ""
    return (
        f"{people}*{order.id}* wants to call {where(request)}{why}. Allow it?\n"
        f"*Arguments:*\n{shown_arguments(request, order.id or '')}"
    )


def approval_request_blocks(
    order: WorkOrder, request: ApprovalRequest, approvers: list[str] | None = None
) -> list[Block]:
    value = str(request.approval_id)
    return [
        *sections(approval_request_text(order, request, approvers)),
        {
            "type": "actions",
            "block_id": "approval_controls",
            "elements": [
                button("Allow once", APPROVAL_ONCE_ACTION, value, style="primary"),
                button("Allow for this order", APPROVAL_ORDER_ACTION, value),
                button("Deny", APPROVAL_DENY_ACTION, value, style="danger"),
            ],
        },
        context(
            f"Allow for this order lets every later call of `{untrusted(request.tool_name)}` "
            f"on {order.id} through without asking; no other order. The tool's result is read "
            "as data; it never gives the run instructions."
        ),
    ]


def decided_line(request: ApprovalRequest) -> str:
    """Who answered what, for the prompt's answered state (a domain's or a tool call's)."""
    assert request.decision is not None and request.decided_by is not None
    if request.kind == "domain":
        return answered_line(request.decision, request.host, request.decided_by)
    word = DOMAIN_DECISION_WORDS[request.decision]
    return f"*{word}* (`{untrusted(request.tool_name)}`) by {mention(request.decided_by)}"
