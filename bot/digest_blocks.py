"""The weekly digest as Block Kit: headline sentences first, then the figures against last week.

People are named, not mentioned: a digest in a leads' channel should not notify everyone on its
top-five lists every week. The publisher resolves names (bot.digest_post); without one, the
user id is shown as plain text, which does not notify either.
"""

from __future__ import annotations

from collections.abc import Mapping

from bot.blocks import Block, cap_blocks, context, fields, header, sections
from bot.mrkdwn import escape
from workers.digest import (
    Digest,
    figure_rows,
    headlines,
    money,
    percent,
    plural,
    ranked,
    route_label,
)

# Spend lines show the largest few; the rest are summed up in "and N more".
SPEND_LINES_MAX = 5


def _person(user: str, names: Mapping[str, str]) -> str:
    return escape(names.get(user) or user)


def _spend_line(title: str, items: list[tuple[str, str]]) -> str:
    shown = ", ".join(f"{escape(name)} {amount}" for name, amount in items[:SPEND_LINES_MAX])
    if len(items) > SPEND_LINES_MAX:
        shown += f" and {len(items) - SPEND_LINES_MAX} more"
    return f"{escape(title)}: {shown}"


def _calibration_lines(digest: Digest) -> list[str]:
    """The verifier against reviewers, and feedback, per workload class and route."""
    found = digest.calibration
    if found is None:
        return []
    lines = []
    if found.verifier.by_route:
        lines.append(
            _spend_line(
                "Verifier agreed with reviewers (class x route)",
                [
                    (
                        f"{r.workload_class} x {r.route}",
                        f"{percent(r.agreement)} of {r.decisions}"
                        + (f", {r.false_accepts} passed but sent back" if r.false_accepts else ""),
                    )
                    for r in found.verifier.by_route
                ],
            )
        )
    if found.feedback:
        lines.append(
            _spend_line(
                "Feedback (class x route)",
                [(f"{f.workload_class} x {f.route}", f"👍 {f.up} · 👎 {f.down}") for f in found.feedback],
            )
        )
    return lines


def digest_text(digest: Digest) -> str:
    """The notification and fallback text: the first headline."""
    return f"{escape(digest.title)}: {headlines(digest)[0]}".replace("*", "")


def digest_blocks(digest: Digest, names: Mapping[str, str] | None = None) -> list[Block]:
    """`names` maps user ids to the names shown for them."""
    now = digest.current
    names = names or {}
    blocks: list[Block] = [header(escape(digest.title))]
    blocks += sections("\n".join(f"• {line}" for line in headlines(digest)))
    if not now.is_empty:
        rows = figure_rows(digest)
        # Two fields per figure would overflow; one field each, "this week (last week)".
        pairs = [(label, f"{this}  _(last week {last})_") for label, this, last in rows]
        for start in range(0, len(pairs), 10):
            blocks.append(fields(pairs[start : start + 10]))
        spend = [
            _spend_line(
                "Spend by workload class",
                [(k, money(v)) for k, v in ranked(now.spend_by_class)],
            ),
            _spend_line(
                "Spend by route (role x class -> model)",
                [(route_label(r), money(r.micro_usd)) for r in now.spend_by_route],
            ),
            _spend_line("Spend by role", [(k, money(v)) for k, v in ranked(now.spend_by_role)]),
        ]
        if now.spend_micro_usd:
            blocks.append(context("\n".join(spend)))
        if calibrated := _calibration_lines(digest):
            blocks.append(context("\n".join(calibrated)))
        people = []
        if now.top_requesters:
            people.append(
                "Top requesters: "
                + ", ".join(
                    f"{_person(p.user, names)} ({p.finished} finished)" for p in now.top_requesters
                )
            )
        if now.top_reviewers:
            people.append(
                "Top reviewers: "
                + ", ".join(
                    f"{_person(p.user, names)} ({plural(p.count, 'decision')}, "
                    f"{p.finished} approved)"
                    for p in now.top_reviewers
                )
            )
        if people:
            blocks.append(context("\n".join(people)))
    blocks.append(
        context(
            f"{escape(digest.week.label)} ({escape(digest.week.timezone)}), compared with the week "
            "before. Leads see this week so far on Delegate's Home tab."
        )
    )
    return cap_blocks(blocks)
