"""Driving the bot like a Slack user would: the state Slack submits for a modal."""

from __future__ import annotations

from typing import Any


def state_from_view(view: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """The `state.values` Slack would submit for `view` with its initial values, plus `overrides`
    (block id -> value: a string for text/number inputs, a list for multi-selects)."""
    values: dict[str, Any] = {}
    for block in view.get("blocks", []):
        if block.get("type") != "input":
            continue
        block_id = block["block_id"]
        element = block["element"]
        kind = element["type"]
        value = overrides.get(block_id, _initial(element))
        state: dict[str, Any] = {"type": kind}
        if kind == "static_select":
            state["selected_option"] = {"value": value} if value is not None else None
        elif kind == "multi_users_select":
            state["selected_users"] = value or []
        elif kind == "users_select":
            state["selected_user"] = value
        elif kind == "datepicker":
            state["selected_date"] = value
        elif kind == "timepicker":
            state["selected_time"] = value
        else:
            state["value"] = value
        values[block_id] = {element["action_id"]: state}
    return values


def _initial(element: dict[str, Any]) -> Any:
    kind = element["type"]
    if kind == "static_select":
        return (element.get("initial_option") or {}).get("value")
    if kind == "multi_users_select":
        return element.get("initial_users", [])
    if kind == "users_select":
        return element.get("initial_user")
    if kind == "datepicker":
        return element.get("initial_date")
    if kind == "timepicker":
        return element.get("initial_time")
    return element.get("initial_value")
