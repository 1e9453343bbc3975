"""Text from outside Delegate's own code, made safe to show in Slack mrkdwn.

A model's answer, a fetched page quoted in a deliverable or another person's message can carry
Slack's control syntax: `<!channel>` pings everyone, `<!subteam^…>` a whole group, and
`<https://evil.example|your bank>` shows a label that hides where the link goes. `untrusted()`
keeps the words and drops the power: broadcasts become inert text, a labelled link shows its real
target, and every other `&`, `<` and `>` is escaped so nothing else is parsed.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"<([^<>\n]*)>")
_BROADCAST = re.compile(r"!(channel|here|everyone)(?:\|.*)?", re.IGNORECASE)
_GROUP = re.compile(r"!subteam\^[A-Z0-9]+(?:\|@?(.*))?", re.IGNORECASE)
_PERSON = re.compile(r"[@#][UWCG][A-Z0-9]+(?:\|[^|]*)?")
_ZWSP = "\u200b"


def escape(text: str) -> str:
    """Slack's three control characters as entities, so the text is shown, not parsed."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def untrusted(text: str) -> str:
    """`text` for a mrkdwn field: no broadcast or group mention, no link that hides its target."""
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
    if _PERSON.fullmatch(inner):
        return "<" + inner.split("|", 1)[0] + ">"  # a person or channel names itself
    target, _, label = inner.partition("|")
    if target.startswith(("http://", "https://", "mailto:")):
        target = escape(target)
        if label and label.strip() and label.strip() != target:
            return f"{escape(label)} ({target})"
        return target
    return escape("<" + inner + ">")
