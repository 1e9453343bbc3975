"""Hypothesis settings and strategies for the fuzz tests (tests/test_fuzz_*.py).

The runs are bounded: a few dozen examples per property, no deadline (the bot answers over real
HTTP), and no example database written into the working tree. Slow properties start the bot
once per test and loop over examples inside it, hence the suppressed fixture health check.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# FUZZ_EXAMPLES=500 pytest tests/test_fuzz_*.py runs a longer campaign by hand.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
# CI replays the same examples every run, so a red build always points at a change; a
# developer's run explores new ones (and a find becomes a regression example).
DERANDOMIZE = os.environ.get("CI", "").lower() == "true"

FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=DERANDOMIZE,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
"""For properties that drive a running bot: the bot fixture is shared by every example."""

FAST = settings(
    max_examples=EXAMPLES * 2,
    derandomize=DERANDOMIZE,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
"""For pure functions (configuration, request checks); their fixtures only set the stage."""

# Text Slack really sends, and text it never should: every plane, combining marks, bidi
# controls, zero-width joiners, NUL, lone surrogates are left out (JSON from Slack is UTF-8).
ODD = [
    "\u202e",  # right-to-left override
    "\u200d",  # zero-width joiner
    "\ufeff",  # byte-order mark
    "\x00",
    "e\u0301\u0301\u0301",  # stacked combining marks
    "👩‍👩‍👧‍👦",
    "\U0001d518\U0001d52b\U0001d526",  # fraktur letters
    "<@UBOT>",
    "<!channel>",
    "<http://169.254.169.254|link>",
    "&lt;&gt;&amp;",
    "*_~`",
    "```",
    "\r\n",
    "\\",
    '"',
    "%s%d%(x)s{0}{}",
    "' OR 1=1 --",
]

odd_text = st.one_of(
    st.text(max_size=60),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=200),
    st.lists(st.sampled_from(ODD), max_size=8).map("".join),
    st.builds(lambda a, b: a + b, st.sampled_from(ODD), st.text(max_size=30)),
)
"""Short strings with odd Unicode and Slack markup."""

huge_text = st.sampled_from([4_001, 40_001, 120_000]).flatmap(
    lambda n: st.sampled_from(["x", "é", "👍", "<@U1> ", "\u202e"]).map(lambda s: (s * n)[:n])
)
"""Strings past Slack's limits (4,000 for a section, 40,000 for a message)."""

any_text = st.one_of(odd_text, odd_text, odd_text, huge_text)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    odd_text,
)

junk = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
"""Any JSON value: what a wrongly typed field holds."""

ids = st.one_of(
    st.sampled_from(["U1", "U2", "UBOT", "C1", "D1", "WO-1", "WO-999999", "WO-0", "T1"]),
    st.from_regex(r"[UCDWG][A-Z0-9]{2,10}", fullmatch=True),
    odd_text,
)

slack_ts = st.one_of(
    st.builds(
        lambda s, u: f"{s}.{u:06d}",
        st.integers(1_600_000_000, 1_900_000_000),
        st.integers(0, 999_999),
    ),
    odd_text,
)


def mutate(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """`base` with some fields dropped, some replaced by junk and some unknown ones added."""
    keys = sorted(base)
    return st.builds(
        _mutated,
        st.just(base),
        st.sets(st.sampled_from(keys), max_size=3) if keys else st.just(set()),
        st.dictionaries(st.sampled_from(keys), junk, max_size=3) if keys else st.just({}),
        st.dictionaries(st.text(min_size=1, max_size=12), junk, max_size=2),
    )


def _mutated(
    base: dict[str, Any], drop: set[str], replace: dict[str, Any], extra: dict[str, Any]
) -> dict[str, Any]:
    out = {k: v for k, v in base.items() if k not in drop}
    out.update(replace)
    for key, value in extra.items():
        out.setdefault(key, value)
    return out


def tracebacks(records: list[logging.LogRecord]) -> list[str]:
    """Log lines that carry a traceback, or are errors: none may come from hostile input."""
    return [
        f"{r.levelname} {r.name}: {r.getMessage()}"
        for r in records
        if r.exc_info or r.levelno >= logging.ERROR or "Traceback" in r.getMessage()
    ]
