"""Fencing text from outside (pages, other people's messages, a deliverable) before a model
reads it.

The system prompt tells the model that text inside `<untrusted>` is data, not instructions. That
only holds if the text cannot end the fence itself or open a fake one: any spelling of the tag
inside it (any case, spaces, full-width or small-form brackets, an escaped solidus, invisible
characters between the letters) is defused before it is wrapped.
"""

from __future__ import annotations

import re
import unicodedata

# Matched after NFKC folding, which turns full-width and small-form brackets and solidi into
# ASCII; the other openers are the angle brackets NFKC keeps apart from "<" and the escapes
# (JSON, HTML) a model reads as one.
_TAG = re.compile(
    r"(?:[<\u2039\u27e8\u3008]|\\u003c|&lt;?|&#0*60;?|&#x0*3c;?)\s*(\\?/?)\s*(untrusted)",
    re.IGNORECASE,
)


def visible(text: str) -> str:
    """`text` as a reader takes it: compatibility forms folded (NFKC) and format characters
    (Unicode category Cf: zero-width spaces and joiners, soft hyphens, bidi marks) dropped."""
    folded = unicodedata.normalize("NFKC", text)
    return "".join(c for c in folded if unicodedata.category(c) != "Cf")


def defuse(content: str) -> str:
    """`content` with every would-be fence tag turned into harmless text."""
    return _TAG.sub(lambda m: f"(tag {'/' if m.group(1) else ''}{m.group(2)})", visible(content))


def fence(content: str, source: str) -> str:
    """Mark outside content as data; its text cannot close the fence early or open another."""
    source = defuse(source).replace('"', "'").replace("\n", " ")
    return f'<untrusted source="{source}">\n{defuse(content)}\n</untrusted>'
