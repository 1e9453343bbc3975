"""App Home: the bot's tab in Slack."""

from __future__ import annotations

from typing import Any

NEW_ORDER_ACTION = "home_new_order"


def home_view() -> dict[str, Any]:
    return {
        "type": "home",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": "Delegate"}},
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": "Hand off a task: I'll clarify it, run it on a budget, and bring it back verified.",
                },
            },
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "style": "primary",
                        "action_id": NEW_ORDER_ACTION,
                        "text": {"type": "plain_text", "text": "New work order"},
                    }
                ],
            },
        ],
    }
