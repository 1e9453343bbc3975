"""App Home: the bot's tab in Slack, with a button to start and the user's recent orders."""

from __future__ import annotations

from typing import Any

from bot.blocks import button, cap_blocks, context, header, sections
from bot.cards import STATE_LABELS
from bot.ids import NEW_ORDER_ACTION
from workers.workorder import WorkOrder


def home_view(orders: list[WorkOrder]) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = [
        header("Delegate"),
        *sections(
            "Hand off a task: I'll clarify it, run it on a budget, and bring it back verified."
        ),
        {
            "type": "actions",
            "elements": [button("New work order", NEW_ORDER_ACTION, "new", style="primary")],
        },
        {"type": "divider"},
    ]
    if orders:
        blocks += sections("*Your recent work orders*")
        blocks += [context(f"*{o.id}* · {o.title} · {STATE_LABELS[o.status]}") for o in orders]
    else:
        blocks.append(
            context("No work orders yet. Mention me in a channel, DM me, or press the button.")
        )
    return {"type": "home", "blocks": cap_blocks(blocks, 100)}
