"""The weekly digest as Block Kit: headline sentences first, then the figures against last week."""

from __future__ import annotations

import re

from bot.blocks import Block, cap_blocks, context, fields, header, sections
from bot.mrkdwn import escape
from workers.digest import Digest, figure_rows, headlines, money, plural

_USER_ID = re.compile(r"^[UW][A-Z0-9]+$")


def _person(user: str) -> str:
    return f"<@{user}>" if _USER_ID.match(user) else escape(user)


def digest_text(digest: Digest) -> str:
    """The notification and fallback text: the first headline."""
    return f"{escape(digest.title)}: {headlines(digest)[0]}".replace("*", "")


def digest_blocks(digest: Digest) -> list[Block]:
    now = digest.current
    blocks: list[Block] = [header(escape(digest.title))]
    blocks += sections("\n".join(f"• {line}" for line in headlines(digest)))
    if not now.is_empty:
        rows = figure_rows(digest)
        # Two fields per figure would overflow; one field each, "this week (last week)".
        pairs = [(label, f"{this}  _(last week {last})_") for label, this, last in rows]
        for start in range(0, len(pairs), 10):
            blocks.append(fields(pairs[start : start + 10]))
        people = []
        if now.top_requesters:
            people.append(
                "Top requesters: "
                + ", ".join(
                    f"{_person(p.user)} ({p.finished} finished)" for p in now.top_requesters
                )
            )
        if now.top_reviewers:
            people.append(
                "Top reviewers: "
                + ", ".join(
                    f"{_person(p.user)} ({plural(p.count, 'decision')})" for p in now.top_reviewers
                )
            )
        if people:
            blocks.append(context("\n".join(people)))
        if now.spend_by_role:
            roles = ", ".join(
                f"{escape(k)} {money(v)}" for k, v in sorted(now.spend_by_role.items())
            )
            blocks.append(context(f"Spend by role: {roles}"))
    blocks.append(
        context(
            f"{escape(digest.week.label)} ({escape(digest.week.timezone)}), compared with the week "
            "before. `delegate digest` prints the full figures."
        )
    )
    return cap_blocks(blocks)
