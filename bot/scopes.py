"""What the Slack app must be granted; manifest.yml declares the same lists (a test keeps them equal)."""

from __future__ import annotations

BOT_SCOPES: frozenset[str] = frozenset(
    {
        "app_mentions:read",
        "canvases:write",
        "channels:history",
        "chat:write",
        "commands",
        "files:read",
        "files:write",
        "groups:history",
        "im:history",
        "im:read",
        "im:write",
        "links:read",
        "links:write",
        "reactions:write",
        "users:read",
    }
)

AGENT_SCOPES: frozenset[str] = frozenset({"assistant:write"})
"""Granted when the app is declared an agent (manifest `features.agent_view`): sessions and the
live plan. Optional: without it the thread keeps its edited status message (bot.agent_session)."""

BOT_EVENTS: frozenset[str] = frozenset(
    {
        "app_mention",
        "message.im",
        "app_home_opened",
        "message.channels",
        "message.groups",
        "link_shared",
        # The native stop button of an agent session (bot.session_stop).
        "agent_session_stopped",
    }
)
