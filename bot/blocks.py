"""Block Kit building blocks that always stay within Slack's limits.

Slack rejects a whole message when one text is too long, so every helper here splits or
truncates with a visible marker instead.
"""

from __future__ import annotations

from typing import Any

SECTION_TEXT_MAX = 3000
FIELD_TEXT_MAX = 2000
HEADER_TEXT_MAX = 150
BUTTON_TEXT_MAX = 75
MODAL_TITLE_MAX = 24
MESSAGE_BLOCKS_MAX = 50
MESSAGE_TEXT_MAX = 40_000
MARKDOWN_TEXT_MAX = 12_000
"""A `markdown` block's limit, and that of all markdown blocks of one message together."""
TRUNCATION_MARKER = "… _(truncated)_"

Block = dict[str, Any]


def truncate(text: str, limit: int, marker: str = TRUNCATION_MARKER) -> str:
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(marker))].rstrip() + marker


def plain(text: str, limit: int = SECTION_TEXT_MAX, *, emoji: bool = True) -> dict[str, Any]:
    return {"type": "plain_text", "text": truncate(text, limit, "…") or " ", "emoji": emoji}


def mrkdwn(text: str, limit: int = SECTION_TEXT_MAX) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": truncate(text, limit) or " "}


def split_text(text: str, limit: int = SECTION_TEXT_MAX) -> list[str]:
    """Split on paragraph, then line, then word boundaries so that each piece fits."""
    if len(text) <= limit:
        return [text]
    pieces: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = max(rest.rfind("\n\n", 0, limit), rest.rfind("\n", 0, limit))
        if cut < limit // 2:
            cut = rest.rfind(" ", 0, limit)
        if cut < limit // 2:
            cut = limit
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip("\n ")
    if rest:
        pieces.append(rest)
    return pieces


def sections(text: str) -> list[Block]:
    """One or more mrkdwn sections holding `text` in full."""
    return [{"type": "section", "text": mrkdwn(piece)} for piece in split_text(text)]


def markdown_blocks(text: str, limit: int = MARKDOWN_TEXT_MAX) -> list[Block]:
    """`text` (standard Markdown, already made inert) as a `markdown` block, which Slack renders
    (tables, lists, code). One block: Slack's limit counts all of a message's markdown blocks
    together, so splitting would not fit more; longer text is cut with a marker (callers send
    long deliverables as a file instead)."""
    return [{"type": "markdown", "text": truncate(text, limit, "… *(truncated)*") or " "}]


def header(text: str) -> Block:
    return {"type": "header", "text": plain(text, HEADER_TEXT_MAX)}


def context(text: str) -> Block:
    return {"type": "context", "elements": [mrkdwn(text, SECTION_TEXT_MAX)]}


def fields(pairs: list[tuple[str, str]]) -> Block:
    return {
        "type": "section",
        "fields": [mrkdwn(f"*{label}*\n{value}", FIELD_TEXT_MAX) for label, value in pairs[:10]],
    }


def button(
    text: str,
    action_id: str,
    value: str,
    *,
    style: str | None = None,
    confirm: dict[str, Any] | None = None,
) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "button",
        "text": plain(text, BUTTON_TEXT_MAX),
        "action_id": action_id,
        "value": value[:2000],
    }
    if style:
        element["style"] = style
    if confirm:
        element["confirm"] = confirm
    return element


def cap_blocks(blocks: list[Block], limit: int = MESSAGE_BLOCKS_MAX) -> list[Block]:
    """Keep at most `limit` blocks. Content is cut, never the buttons: every `actions` block is
    kept in its place, and a line where the cut content was says how much was left out."""
    if len(blocks) <= limit:
        return blocks
    controls = sum(1 for b in blocks if b.get("type") == "actions")
    room = limit - 1 - controls  # one block for the line saying what was cut
    kept: list[Block] = []
    notice: Block | None = None
    for block in blocks:
        if block.get("type") == "actions" or room > 0:
            room -= block.get("type") != "actions"
            kept.append(block)
        elif notice is None:
            notice = context("")
            kept.append(notice)
    assert notice is not None
    left_out = len(blocks) - len(kept) + 1
    notice.update(context(f"_{left_out} more blocks not shown (Slack's limit)._"))
    return kept[:limit]


def modal_title(text: str) -> dict[str, Any]:
    return plain(text, MODAL_TITLE_MAX, emoji=False)


def slack_date(unix_s: int, fallback: str) -> str:
    """A date Slack renders in each reader's own time zone."""
    return f"<!date^{unix_s}^{{date_short_pretty}} at {{time}}|{fallback}>"
