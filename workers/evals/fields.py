"""Which field a clarifying question is about, for Ask-F1: a fixed keyword map, not a model.

A judge model would score questions better but would make the score depend on a second model
and cost money per case; a fixed map makes scores comparable across the routes compared. Each
question is given the first field whose pattern it matches, in the order below (a deadline
question that names the audience counts as a deadline question), or `other`.
"""

from __future__ import annotations

import re

FIELDS = ("deadline", "audience", "sources", "deliverable", "criteria", "scope")
OTHER = "other"

_DAYS = "monday|tuesday|wednesday|thursday|friday|saturday|sunday|eod|end of"
_PATTERNS: dict[str, re.Pattern[str]] = {
    "deadline": re.compile(
        r"\bby when\b|\bwhen (do|does|should|would|will|is|are|must|can)\b[^?]*\b(need|due|"
        r"ready|done|deliver|finish|have|send|go out|published|launch)|deadline|\bdue\b|"
        rf"what date|which date|timeline|time ?frame|how soon|urgen|\bby ({_DAYS})\b|"
        r"what time|turnaround"
    ),
    "audience": re.compile(
        r"audience|who (is|'s) (it|this|the \w+) for|who will (read|see|receive|use)|"
        r"for whom|\breaders?\b|stakeholder|who (is|are) the (reader|recipient)|recipient|"
        r"intended for|internal or external|external or internal|customer-facing|"
        r"who should (receive|get)|who('s| is) going to read|sent to whom|addressed to"
    ),
    "sources": re.compile(
        r"\bsources?\b|which data|what data|data source|where (should|can|do|does|is|are) "
        r"(i|we|the)\b[^?]*\b(find|get|pull|take|come|data|numbers|figures)|spreadsheet you|"
        r"\blink\b|\bfile\b|dashboard|access to|attach|where .* (stored|kept|live)|"
        r"which (report|export|system|tool|database|crm)|references?\b|cite"
    ),
    "deliverable": re.compile(
        r"format|what form|deliverable|slides?\b|deck|spreadsheet|\bdoc\b|document|memo|"
        r"\bemail\b|\btable\b|\bchart\b|one-pager|summary or|written (up|report)|"
        r"what (do|would) you (want|like) (back|to receive|me to produce|as)|output|"
        r"how (long|detailed)|length|word count|bullet"
    ),
    "criteria": re.compile(
        r"done look|success|criteri|good look|what (makes|would make) (it|this) (good|useful)|"
        r"requirements?|must (it )?(include|have|contain)|should (it )?(include|contain)|"
        r"how will (you|we|it) (judge|measure|know)|definition of done|acceptance|"
        r"what (decision|question) (is|should) (it|this)"
    ),
    "scope": re.compile(
        r"\bwhich\b|\bwhat (region|market|period|range|quarter|year|month|products?|"
        r"teams?|countries|segment|language|topic|aspects?|areas?)\b|scope|\bfocus\b|"
        r"\bcover\b|\bcompare\b|how many|\bonly\b|\bor\b"
    ),
}


def field_of(question: str) -> str:
    """The field a clarifying question asks about (`FIELDS`), or `other`."""
    text = " ".join(question.lower().split())
    for name in FIELDS:
        if _PATTERNS[name].search(text):
            return name
    return OTHER


def fields_asked(questions: list[str]) -> set[str]:
    return {field_of(q) for q in questions}
