"""The fields Delegate's listeners read, checked once before any of them runs.

Slack always sends them, with these types; a request without them (forged, hand-made, or a
frame over Socket Mode, which `bot.http_guard` never sees) is acknowledged and dropped with one
log line instead of failing inside a listener with a traceback. NUL characters are removed:
Slack never sends them and PostgreSQL cannot store them in text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.middleware.async_middleware import AsyncMiddleware
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse

log = logging.getLogger(__name__)

# Message-like events: fields that must be strings when present, and those a listener needs.
_EVENT_STRINGS = (
    "type",
    "subtype",
    "user",
    "channel",
    "ts",
    "thread_ts",
    "text",
    "bot_id",
    "channel_type",
    "tab",
    "event_ts",
)
_EVENT_NEEDS = {"app_mention": ("user", "channel", "ts"), "app_home_opened": ("user",)}
_PLAIN_SUBTYPES = (None, "file_share", "thread_broadcast")
_INTERACTIONS = ("block_actions", "view_submission", "view_closed", "shortcut", "message_action")


def malformed(body: Any) -> str | None:
    """Why Delegate's listeners cannot handle this request body, or None if they can."""
    if not isinstance(body, dict):
        return "the body is not an object"
    if body.get("type") == "event_callback":
        return _event_problem(body.get("event"))
    if body.get("type") in _INTERACTIONS:
        return _interaction_problem(body)
    if "command" in body:
        return _strings(
            body,
            ("command", "user_id", "channel_id", "text", "response_url"),
            needs=("user_id", "channel_id"),
        )
    return None


def _event_problem(event: Any) -> str | None:
    if not isinstance(event, dict):
        return "event is not an object"
    needs = _EVENT_NEEDS.get(str(event.get("type")), ())
    if event.get("type") == "message" and event.get("subtype") in _PLAIN_SUBTYPES:
        needs = ("channel", "ts") if event.get("user") else ()
    return _strings(event, _EVENT_STRINGS, needs=needs, where="event.")


def _interaction_problem(body: dict[str, Any]) -> str | None:
    user = body.get("user")
    if not isinstance(user, dict) or not isinstance(user.get("id"), str) or not user["id"]:
        return "user.id is missing"
    problem = _strings(body, ("trigger_id", "callback_id", "response_url"))
    for name in ("channel", "message", "container", "view"):
        if problem is None and body.get(name) is not None and not isinstance(body[name], dict):
            problem = f"{name} is not an object"
    if problem is None and isinstance(body.get("channel"), dict):
        problem = _strings(body["channel"], ("id",), where="channel.")
    if problem is None and isinstance(body.get("message"), dict):
        problem = _strings(body["message"], ("ts", "thread_ts", "text", "user"), where="message.")
        if problem is None and not isinstance(body["message"].get("blocks", []), list):
            problem = "message.blocks is not a list"
    if problem is None and body["type"] == "block_actions":
        actions = body.get("actions")
        if not actions or not isinstance(actions, list):
            return "actions is not a non-empty list"
        if not all(isinstance(a, dict) for a in actions):
            return "actions is not a list of objects"
        for action in actions:
            # Every button Delegate posts carries a value (the order id).
            button = action.get("type", "button") == "button"
            needs = ("action_id", "value") if button else ("action_id",)
            problem = problem or _strings(
                action, ("action_id", "value"), needs=needs, where="action."
            )
    if problem is None and body["type"] == "message_action":
        if not isinstance(body.get("message"), dict) or not isinstance(body.get("channel"), dict):
            return "a message shortcut needs its message and channel"
        problem = _strings(body["message"], (), needs=("ts",), where="message.")
    if problem is None and body["type"] in ("view_submission", "view_closed"):
        problem = _view_problem(body.get("view"))
    return problem


def _view_problem(view: Any) -> str | None:
    if not isinstance(view, dict):
        return "view is not an object"
    problem = _strings(view, ("callback_id", "private_metadata"), where="view.")
    if problem is not None:
        return problem
    state = view.get("state", {})
    values = state.get("values", {}) if isinstance(state, dict) else None
    if not isinstance(values, dict) or not all(
        isinstance(block, dict) and all(isinstance(leaf, dict) for leaf in block.values())
        for block in values.values()
    ):
        return "view.state.values is not a mapping of blocks to inputs"
    if view.get("private_metadata"):
        try:
            metadata = json.loads(view["private_metadata"])
        except ValueError:
            return "view.private_metadata is not JSON"
        if not isinstance(metadata, dict):
            return "view.private_metadata is not a JSON object"
    return None


def _strings(
    obj: dict[str, Any], names: tuple[str, ...], *, needs: tuple[str, ...] = (), where: str = ""
) -> str | None:
    for name in names:
        if obj.get(name) is not None and not isinstance(obj[name], str):
            return f"{where}{name} is not a string"
    for name in needs:
        if not isinstance(obj.get(name), str) or not obj[name]:
            return f"{where}{name} is missing"
    return None


def strip_nul(value: Any, depth: int = 0) -> Any:
    """`value` with NUL characters removed from every string in it (keys included)."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if depth > 64:
        return value
    if isinstance(value, dict):
        return {strip_nul(k, depth + 1): strip_nul(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_nul(v, depth + 1) for v in value]
    return value


def _may_hold_nul(raw_body: str) -> bool:
    """False only for a JSON body (Events API) that has no NUL and no escape for one; spares
    rebuilding every event. Form bodies (which can encode one in many ways) and Socket Mode
    requests (which have no raw body) are always stripped."""
    return not raw_body.startswith("{") or "u0000" in raw_body or "\x00" in raw_body


class ShapeMiddleware(AsyncMiddleware):
    """Acknowledges and drops a malformed request before any listener (or Bolt's own argument
    building, which indexes `actions[0]`) sees it; the first middleware registered."""

    async def async_process(
        self,
        *,
        req: AsyncBoltRequest,
        resp: BoltResponse,
        next: Callable[[], Awaitable[BoltResponse]],
    ) -> BoltResponse | None:
        if _may_hold_nul(req.raw_body):
            req.body = strip_nul(req.body)
        problem = malformed(req.body)
        if problem is not None:
            log.info("ignored a malformed Slack request: %s", problem)
            return BoltResponse(status=200, body="")
        return await next()
