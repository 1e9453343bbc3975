"""Block Kit for a run's request to read a domain outside its allowlist: the prompt with Allow
once / Allow domain for this order / Deny, and the answered state."""

from __future__ import annotations

from bot.blocks import Block, button, context, sections
from bot.cards import mention
from bot.ids import DOMAIN_DENY_ACTION, DOMAIN_ONCE_ACTION, DOMAIN_ORDER_ACTION
from bot.mrkdwn import untrusted
from workers.progress import DomainRequest
from workers.tools.suffixes import is_public_suffix
from workers.workorder import WorkOrder

DOMAIN_DECISION_WORDS = {
    "once": "Allowed once",
    "order": "Allowed for this order",
    "deny": "Denied",
}
SHOWN_URL_CHARS = 200


def shown_url(url: str) -> str:
    """The URL as people read it: no scheme, cut to a sane length, inert in mrkdwn."""
    bare = url.split("://", 1)[-1]
    if len(bare) > SHOWN_URL_CHARS:
        bare = bare[: SHOWN_URL_CHARS - 1] + "…"
    return untrusted(bare.replace("`", "'"))


def domain_request_text(order: WorkOrder, request: DomainRequest) -> str:
    asked = request.approvers or (order.requester, order.escalation_contact)
    people = " ".join(mention(p) for p in dict.fromkeys(asked) if p)
    reason = untrusted(request.reason) if request.reason else "_no reason given_"
    host = untrusted(request.host)
    scope = (
        f"`{host}` is a public suffix (anyone can have a site under it), so it can only be "
        "allowed once."
        if is_public_suffix(request.host)
        else f"Allowing the domain for this order covers `{host}` and all its subdomains."
    )
    return (
        f"{people} *{order.id}* wants to read `{shown_url(request.url)}` "
        f"({reason}).\n`{host}` is not among the domains this order may read. {scope} "
        "Allow it?"
    )


def domain_request_blocks(order: WorkOrder, request: DomainRequest) -> list[Block]:
    value = str(request.approval_id)
    return [
        *sections(domain_request_text(order, request)),
        {
            "type": "actions",
            "block_id": "domain_controls",
            "elements": [
                button("Allow once", DOMAIN_ONCE_ACTION, value, style="primary"),
                *(
                    []
                    if is_public_suffix(request.host)
                    else [button("Allow domain for this order", DOMAIN_ORDER_ACTION, value)]
                ),
                button("Deny", DOMAIN_DENY_ACTION, value, style="danger"),
            ],
        },
        context("The page is read as data; its text never gives the run instructions."),
    ]


def answered_line(decision: str, host: str, user: str) -> str:
    return f"*{DOMAIN_DECISION_WORDS[decision]}* (`{untrusted(host)}`) by {mention(user)}"
