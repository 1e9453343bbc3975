"""Model output shown in Slack cannot ping everyone or disguise a link."""

from __future__ import annotations

import pytest

from bot.mrkdwn import untrusted


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("hi <!channel> look", "hi @\u200bchannel look"),
        ("<!here|here> and <!everyone>", "@\u200bhere and @\u200beveryone"),
        ("<!CHANNEL>", "@\u200bchannel"),
        ("ping <!subteam^S0123ABC|@finance-team>", "ping @\u200bfinance-team"),
        ("ping <!subteam^S0123ABC>", "ping @\u200bgroup"),
        (
            "log in at <https://evil.example/login|https://bank.example>",
            "log in at https://bank.example (https://evil.example/login)",
        ),
        ("<https://example.com|example.com>", "example.com (https://example.com)"),
        ("<https://example.com>", "https://example.com"),
        ("<https://example.com|https://example.com>", "https://example.com"),
        ("a < b && c > d", "a &lt; b &amp;&amp; c &gt; d"),
        ("<javascript:alert(1)|click>", "&lt;javascript:alert(1)|click&gt;"),
        ("<!date^1392734382^{date}|Feb 18>", "&lt;!date^1392734382^{date}|Feb 18&gt;"),
        # Issue 19, item 4: outside text cannot notify a person or link a channel either.
        ("thanks <@U123ABC|bob>", "thanks &lt;@U123ABC|bob&gt;"),
        ("see <#C123ABC>", "see &lt;#C123ABC&gt;"),
        ("&lt;!channel&gt;", "&amp;lt;!channel&amp;gt;"),
        ("<<!channel>>", "&lt;@\u200bchannel&gt;"),
    ],
)
def test_untrusted_text_is_neutralised(text: str, shown: str) -> None:
    assert untrusted(text) == shown


def test_nothing_that_pings_survives_any_nesting() -> None:
    nasty = "<!channel<!here>> <<<!everyone>>> <!subteam^S1|<!channel>>"
    shown = untrusted(nasty)
    for forbidden in ("<!channel", "<!here", "<!everyone", "<!subteam"):
        assert forbidden not in shown
