"""Fencing text from outside (pages, other people's messages) before a model reads it.

The system prompt tells the model that text inside `<untrusted>` is data, not instructions. That
only holds if the text cannot end the fence itself or open a fake one: any spelling of the tag
inside it (any case, spaces, full-width brackets) is defused before it is wrapped.
"""

from __future__ import annotations

import re

_TAG = re.compile(r"[<\uff1c\u2039\u27e8]\s*(/?)\s*(untrusted)", re.IGNORECASE)


def defuse(content: str) -> str:
    """`content` with every would-be fence tag turned into harmless text."""
    return _TAG.sub(lambda m: f"(tag {m.group(1)}{m.group(2)})", content)


def fence(content: str, source: str) -> str:
    """Mark outside content as data; its text cannot close the fence early or open another."""
    source = defuse(source).replace('"', "'").replace("\n", " ")
    return f'<untrusted source="{source}">\n{defuse(content)}\n</untrusted>'
