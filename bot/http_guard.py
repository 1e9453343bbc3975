"""Checks on a raw Slack HTTP request before Bolt sees it, so bad input gets a 4xx, not a 500.

Bolt assumes a well-formed request: a timestamp like `abc` or a body that is not UTF-8 makes it
raise, which the HTTP server answers with 500 and a traceback in the log. These checks are pure
functions of the headers and bytes; `bot.server` turns a refusal into the response.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

# Slack's own replay window for a signed request.
MAX_AGE_S = 5 * 60
_FORM = "application/x-www-form-urlencoded"
_JSON = "application/json"
# Slack's deepest payloads (rich text inside a modal's state) nest about fifteen levels; anything
# far deeper is hostile, and would exhaust Python's recursion in a decoder or handler downstream.
MAX_JSON_DEPTH = 64


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str


def check_request(
    *,
    body: bytes,
    content_type: str,
    timestamp: str | None,
    signature: str | None,
    signing_secret: str,
    now: float | None = None,
) -> Refusal | None:
    """Why this request must be refused (and with which status), or None if Bolt may have it."""
    refusal = check_signature(
        body=body, timestamp=timestamp, signature=signature, signing_secret=signing_secret, now=now
    )
    if refusal is not None:
        return refusal
    return check_body(body, content_type)


def check_signature(
    *,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    signing_secret: str,
    now: float | None = None,
) -> Refusal | None:
    """Slack's v0 signature over the raw bytes, with a fresh, plain-integer timestamp."""
    if not timestamp or not signature:
        return Refusal(401, "missing signature headers")
    # isascii() first: str.isdigit() accepts other scripts' digits, which int() would read.
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        return Refusal(401, "malformed request timestamp")
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > MAX_AGE_S:
        return Refusal(401, "stale request timestamp")
    base = b"v0:" + timestamp.encode() + b":" + body
    expected = "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        return Refusal(401, "invalid signature")
    return None


def check_body(body: bytes, content_type: str) -> Refusal | None:
    """The body is UTF-8 JSON or form data of a shape Slack sends."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return Refusal(400, "the body is not UTF-8")
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime == _JSON:
        parsed = _load_json(text, what="the body")
        if isinstance(parsed, Refusal):
            return parsed
        return check_envelope(parsed)
    if mime == _FORM:
        fields = parse_qs(text, keep_blank_values=True)
        if "payload" in fields:
            payload = _load_json(fields["payload"][0], what="the interactivity payload")
            if isinstance(payload, Refusal):
                return payload
            return check_interaction(payload)
        if "command" in fields:
            return check_command(fields)
        return Refusal(400, "a form body must carry a command or a payload")
    return Refusal(400, "the body must be JSON or form data")


def _load_json(text: str, *, what: str) -> Any:
    """The decoded JSON, or a refusal if it is not JSON or nests deeper than Slack ever does."""
    try:
        parsed = json.loads(text)
    except RecursionError:
        return Refusal(400, f"{what} nests too deeply")
    except ValueError:
        return Refusal(400, f"{what} is not valid JSON")
    if json_depth(parsed) > MAX_JSON_DEPTH:
        return Refusal(400, f"{what} nests too deeply")
    return parsed


def json_depth(value: Any) -> int:
    """How deeply arrays and objects nest in a decoded JSON value, counted without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            deepest = max(deepest, depth)
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def check_envelope(body: Any) -> Refusal | None:
    """An Events API envelope: an object, and an `event` object with a string type."""
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        return Refusal(400, "an event envelope must be an object with a type")
    if body["type"] == "url_verification" and not isinstance(body.get("challenge"), str):
        return Refusal(400, "url_verification needs a string challenge")
    if body["type"] == "event_callback":
        event = body.get("event")
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return Refusal(400, "event_callback needs an event object with a type")
    return None


def check_interaction(payload: Any) -> Refusal | None:
    """An interactivity payload: an object with a type and the acting user."""
    if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
        return Refusal(400, "an interactivity payload must be an object with a type")
    user = payload.get("user")
    if not isinstance(user, dict) or not isinstance(user.get("id"), str):
        return Refusal(400, "an interactivity payload must name its user")
    kind = payload["type"]
    if kind == "block_actions":
        actions = payload.get("actions")
        if not isinstance(actions, list) or not all(isinstance(a, dict) for a in actions):
            return Refusal(400, "block_actions needs a list of actions")
    if kind in ("view_submission", "view_closed"):
        view = payload.get("view")
        if (
            not isinstance(view, dict)
            or not isinstance(view.get("type"), str)
            or not isinstance(view.get("state", {}), dict)
        ):
            return Refusal(400, f"{kind} needs a view object")
    return None


def check_command(fields: dict[str, list[str]]) -> Refusal | None:
    """A slash command names its command and its user."""
    for name in ("command", "user_id", "channel_id"):
        if not fields.get(name) or not fields[name][0]:
            return Refusal(400, f"a slash command needs {name}")
    return None
