"""Text from outside Delegate's own code, made safe to show in Slack mrkdwn.

A model's answer, a fetched page quoted in a deliverable or another person's message can carry
Slack's control syntax: `<!channel>` pings everyone, `<!subteam^…>` a whole group, and
`<https://evil.example|your bank>` shows a label that hides where the link goes, and `<@U…>`
or `<#C…>` notifies a person or links a channel nobody chose. `untrusted()` keeps the words and
drops the power: broadcasts become inert text, a labelled link shows its real target, and every
other `&`, `<` and `>` is escaped so nothing else is parsed.

It is the one function outside text goes through on its way to Slack. Text that Delegate's own
code composed with live markup on purpose (a mention of a validated user id) is marked `Mrkdwn`,
and `untrusted()` lets exactly that through, so a composed string can travel through a layer
that escapes everything else.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"<([^<>\n]*)>")
_BROADCAST = re.compile(r"!(channel|here|everyone)(?:\|.*)?", re.IGNORECASE)
_GROUP = re.compile(r"!subteam\^[A-Z0-9]+(?:\|@?(.*))?", re.IGNORECASE)
_USER_ID = re.compile(r"[UW][A-Z0-9]{1,20}")
_ZWSP = "\u200b"


class Mrkdwn(str):
    """Mrkdwn composed by Delegate's own code; every outside part of it already went through
    `untrusted()` (or is a validated id)."""

    __slots__ = ()


def mention(user: str | None) -> str:
    """A live mention of a Slack user id; anything that is not one is shown inert."""
    if not user:
        return "_nobody_"
    return f"<@{user}>" if _USER_ID.fullmatch(user) else untrusted(user)


def escape(text: str) -> str:
    """Slack's three control characters as entities, so the text is shown, not parsed."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def untrusted(text: str) -> str:
    """`text` for a mrkdwn field: no broadcast, group, person or channel mention, no link that
    hides its target. `Mrkdwn` composed by our own code passes unchanged."""
    if isinstance(text, Mrkdwn):
        return text
    out: list[str] = []
    last = 0
    for match in _TOKEN.finditer(text):
        out.append(escape(text[last : match.start()]))
        out.append(_token(match.group(1)))
        last = match.end()
    out.append(escape(text[last:]))
    return "".join(out)


def _token(inner: str) -> str:
    broadcast = _BROADCAST.fullmatch(inner)
    if broadcast:
        # A zero-width space keeps "@channel" readable but never a mention.
        return "@" + _ZWSP + broadcast.group(1).lower()
    group = _GROUP.fullmatch(inner)
    if group:
        return "@" + _ZWSP + escape(group.group(1) or "group")
    target, _, label = inner.partition("|")
    if target.startswith(("http://", "https://", "mailto:")):
        target = escape(target)
        if label and label.strip() and label.strip() != target:
            return f"{escape(label)} ({target})"
        return target
    return escape("<" + inner + ">")


# A standard Markdown link or image: [label](target) / ![alt](target).
_MD_LINK = re.compile(r"!?\[([^\[\]\n]*)\]\(\s*<?([^()\s<>]*)>?(?:\s+\"[^\"\n]*\")?\s*\)")


def untrusted_markdown(text: str) -> str:
    """`text` for a `markdown` block (standard Markdown, which Slack renders: tables, lists,
    code): Slack's own control syntax made inert as `untrusted()` does, and a Markdown link whose
    label is not its target shown as "label (target)", so no label hides where a link goes."""

    def shown(match: re.Match[str]) -> str:
        label, target = match.group(1).strip(), match.group(2)
        if not label or label == target:
            return target
        return f"{label} ({target})"

    return _MD_LINK.sub(shown, untrusted(text))
