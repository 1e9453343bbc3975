"""Which field a clarifying question is about, for Ask-F1: a fixed keyword map, not a model.

A judge model would score questions better but would make the score depend on a second model
and cost money per case; a fixed map makes scores comparable across the routes compared. Each
question is given the field of the first pattern it matches, in the order below (a deadline
question that names the audience counts as a deadline question), or `other`.
"""

from __future__ import annotations

import re

FIELDS = ("deadline", "audience", "sources", "deliverable", "criteria", "scope")
OTHER = "other"

_DAYS = "monday|tuesday|wednesday|thursday|friday|saturday|sunday|eod|end of"
# (field, pattern), tried in order; scope and deliverable each have a strong pattern tried
# early ("what topics should the deck cover" is scope, "slides or a doc" is the deliverable)
# and a weak one tried last.
_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("deadline", re.compile(
        r"\bby when\b|\bwhen (do|does|should|would|will|is|are|must|can)\b[^?]*\b(need|due|"
        r"ready|done|deliver|finish|have|send|go out|published|launch)|deadline|\bdue\b|"
        rf"what date|which date|timeline|time ?frame|how soon|urgen|\bby ({_DAYS})\b|"
        r"what time (do|does|should|is)|turnaround"
    )),
    ("audience", re.compile(
        r"audience|who (is|'s) (it|this|the \w+) for|who will (read|see|receive|use)|"
        r"for whom|\breaders?\b|stakeholder|recipient|intended for|internal or external|"
        r"external or internal|customer-facing|who should (receive|get)|sent to whom|"
        r"addressed to|\bwho\b[^?]*\b(going to|receiv|read)|internal (use|team|audience)|"
        r"for (customers|clients|the board|leadership|execs?|executives)\b"
    )),
    ("sources", re.compile(
        r"\bsources?\b|which data|what data|data source|where (should|can|do|does|is|are) "
        r"(i|we|the)\b[^?]*\b(find|get|pull|take|come|data|numbers|figures)|"
        r"\bwhere (is|are) (the|your|that)\b|\blink\b|\bfile\b|dashboard|access to|attach|"
        r"which (list|doc|document|spreadsheet|sheet|file|deck|report|export|system|tool|"
        r"database|crm|forecast)|(share|send|paste) (it|the|a|that|your)|references?\b|cite"
    )),
    ("criteria", re.compile(
        r"done look|success|criteri|good look|what (makes|would make) (it|this) (good|useful)|"
        r"requirements?|must (it )?(include|have|contain)|should (it )?(include|contain)|"
        r"how will (you|we|it) (judge|measure|know)|definition of done|acceptance|"
        r"what (decision|question) (is|should) (it|this)|\bmean here\b|what counts as|"
        r"what do you mean by"
    )),
    ("deliverable", re.compile(
        r"format|what form|deliverable|(slides?|deck|doc|document|table|memo|email) or\b|"
        r"what (do|would) you (want|like) (back|to receive|me to produce|as)|output|"
        r"word count|how (long|detailed)|\blength\b"
    )),
    ("scope", re.compile(
        r"\bwhich\b|\bwhat (region|market|period|range|quarter|year|month|products?|"
        r"teams?|countries|segment|language|topics?|aspects?|areas?)\b|scope|\bfocus\b|"
        r"\bcover\b|\bcompare\b|goal|purpose|objective|topics?\b|language|announc|be about\b|"
        r"what (do|would) you (want|hope) to (learn|find|achieve)"
    )),
    ("deliverable", re.compile(
        r"slides?\b|deck|spreadsheet|\bdoc\b|document|memo|\bemail\b|\btable\b|\bchart\b|"
        r"one-pager|summary|written|bullet"
    )),
    ("scope", re.compile(r"how many|\bonly\b|\bor\b")),
]


def field_of(question: str) -> str:
    """The field a clarifying question asks about (`FIELDS`), or `other`."""
    text = " ".join(question.lower().split())
    for name, pattern in _PATTERNS:
        if pattern.search(text):
            return name
    return OTHER


def fields_asked(questions: list[str]) -> set[str]:
    return {field_of(q) for q in questions}
