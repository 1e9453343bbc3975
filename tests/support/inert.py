"""Finding Slack markup that would still be live: broadcasts, group, person and channel
mentions and disguised links, in any field Slack parses (issue 19, item 4)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# What would still be live in Slack if it reached a parsed field.
LIVE = ("<!channel", "<!here", "<!everyone", "<!subteam", "<@U123", "<#C1", "<http://evil")
# Fields Slack never parses for mentions or links.
VERBATIM_KEYS = {
    "initial_value",
    "value",
    "action_id",
    "block_id",
    "callback_id",
    "private_metadata",
    "alt_text",
    "initial_users",
    "initial_user",
}


def live_fields(output: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, text) of every string in `output` that Slack parses as mrkdwn and that carries a
    live token."""
    if isinstance(output, str):
        if any(token in output for token in LIVE):
            yield path, output
    elif isinstance(output, dict):
        if output.get("type") == "plain_text":
            return
        for key, value in output.items():
            if key not in VERBATIM_KEYS:
                yield from live_fields(value, f"{path}.{key}")
    elif isinstance(output, list | tuple):
        for i, value in enumerate(output):
            yield from live_fields(value, f"{path}[{i}]")
