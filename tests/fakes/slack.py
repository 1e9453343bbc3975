"""A fake Slack Web API server and a signed-request sender for Bolt apps under test."""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import mimetypes
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from slack_sdk.signature import SignatureVerifier

from tests.support.waiting import DEADLINE_S

from . import FakeServer

__all__ = [
    "DEFAULT_SCOPES",
    "Call",
    "FakeSlack",
    "ResponseUrlPost",
    "SlackError",
    "SlackSender",
]

DEFAULT_SCOPES: tuple[str, ...] = (
    "app_mentions:read",
    "chat:write",
    "commands",
    "im:history",
    "im:read",
    "im:write",
    "users:read",
    "files:write",
    "reactions:write",
    "channels:history",
    "groups:history",
    "files:read",
    "canvases:write",
    "links:read",
    "links:write",
)

# Work Object entity types chat.unfurl's `metadata` accepts (docs.slack.dev/messaging/work-objects).
_ENTITY_TYPES = frozenset(
    {
        "slack#/entities/task",
        "slack#/entities/file",
        "slack#/entities/item",
        "slack#/entities/incident",
        "slack#/entities/content_item",
    }
)

# Arguments that slack_sdk form-encodes as JSON strings; the fake always decodes them.
_JSON_ARGS = frozenset({"blocks", "attachments", "view", "files", "metadata", "unfurls"})

Handler = Callable[[dict[str, Any]], dict[str, Any]]

# Methods that write into a channel: Slack answers them `is_archived` in an archived channel
# (reading it, conversations.replies, still works).
_CHANNEL_WRITES = frozenset(
    {
        "chat.postMessage",
        "chat.update",
        "chat.delete",
        "chat.postEphemeral",
        "chat.unfurl",
        "chat.startStream",
        "chat.appendStream",
        "chat.stopStream",
        "files.completeUploadExternal",
        "reactions.add",
        "reactions.remove",
    }
)


class SlackError(Exception):
    """Raised by a method handler to answer `{"ok": false, "error": <code>}`; `messages` go
    to `response_metadata.messages`, as Slack explains `invalid_blocks` and its kin."""

    def __init__(self, error: str, messages: list[str] | None = None) -> None:
        super().__init__(error if not messages else f"{error}: {'; '.join(messages)}")
        self.error = error
        self.messages = messages or []


@dataclass
class Call:
    """One Web API call received; `status`/`response` are filled once it has been answered.

    JSON-string arguments such as `blocks`, `view` and `files` are decoded.
    """

    method: str
    args: dict[str, Any]
    headers: CIMultiDict[str]
    token: str | None = None
    status: int | None = None
    response: dict[str, Any] | None = None
    at: float = field(default_factory=time.monotonic)
    """When the call arrived (`time.monotonic`)."""
    answered_at: float | None = None
    """When its answer was decided (`time.monotonic`), e.g. a 429 with its Retry-After."""


@dataclass
class ResponseUrlPost:
    """One JSON body POSTed to a `response_url` handed out by the fake."""

    key: str
    body: dict[str, Any]


@dataclass
class _Failure:
    status: int
    error: str
    retry_after: float | None
    processed: bool = False
    matching: Callable[[dict[str, Any]], bool] | None = None


@dataclass
class _Flaky:
    """Seeded random faults (`FakeSlack.flaky`): which calls fail, and how."""

    rng: random.Random
    rate: float
    methods: frozenset[str] | None
    weights: dict[str, float]
    retry_after: float
    hang_s: float
    max_timeouts: int | None
    processed_on_timeout: float

    def draw(self, method: str, timeouts_so_far: int) -> str | None:
        """'429', '5xx', 'timeout' or 'timeout-after-processing' for this call, or None."""
        if self.methods is not None and method not in self.methods:
            return None
        if self.rng.random() >= self.rate:
            return None
        kinds = list(self.weights)
        if self.max_timeouts is not None and timeouts_so_far >= self.max_timeouts:
            kinds = [k for k in kinds if k != "timeout"]
        if not kinds:
            return None
        kind = self.rng.choices(kinds, weights=[self.weights[k] for k in kinds])[0]
        if kind == "timeout" and self.rng.random() < self.processed_on_timeout:
            return "timeout-after-processing"
        return kind


@dataclass
class _Ids:
    """Monotonic generators for realistic Slack identifiers."""

    micros: itertools.count[int] = field(
        default_factory=lambda: itertools.count(1_700_000_000_000_100, 100)
    )
    serial: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def ts(self) -> str:
        us = next(self.micros)
        return f"{us // 1_000_000}.{us % 1_000_000:06d}"

    def make(self, prefix: str) -> str:
        return f"{prefix}{next(self.serial):08X}"


class FakeSlack(FakeServer):
    """A stateful fake of the Slack Web API served at `api_url` (`/api/<method>`)."""

    def __init__(
        self,
        token: str = "xoxb-test",
        *,
        scopes: list[str] | None = None,
        team_id: str = "T1",
        bot_user_id: str = "UBOT",
        bot_id: str = "BBOT",
        app_id: str = "A1",
    ) -> None:
        super().__init__()
        self.tokens: set[str] = {token}
        self.bot_token = token
        self.scopes: list[str] = list(DEFAULT_SCOPES if scopes is None else scopes)
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.app_id = app_id
        self.calls: list[Call] = []
        self.responses: list[ResponseUrlPost] = []
        self.delay: dict[str, float] = {}
        self.archived: set[str] = set()
        """Archived channels: every write into one is answered `is_archived`."""
        self.gates: dict[str, asyncio.Event] = {}
        """Calls of a gated method are held (recorded, unanswered) until its event is set."""
        self.channel_gates: dict[str, asyncio.Event] = {}
        """Calls into a gated channel are held (recorded, unanswered) until its event is set."""
        self.users: dict[str, dict[str, Any] | None] = {}
        self.messages: dict[str, list[dict[str, Any]]] = {}
        self.ephemerals: list[dict[str, Any]] = []
        self.views: dict[str, dict[str, Any]] = {}
        self.home_views: dict[str, dict[str, Any]] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self.canvases: dict[str, dict[str, Any]] = {}
        self.downloads: list[str] = []
        """File ids downloaded from their `url_private` (with a valid token)."""
        self.statuses: dict[tuple[str, str], str] = {}
        self.sessions: dict[tuple[str, str], dict[str, Any]] = {}
        """Agent sessions by (channel, thread_ts): `status`, `title` and every status set, in
        `history` (agents.sessions.*, chat.stopStream's `session_status`)."""
        self.streaming = True
        """False: the workspace predates streaming, and chat.*Stream answer `unknown_method`."""
        self.reactions: list[tuple[str, str, str]] = []
        self.unfurls: list[dict[str, Any]] = []
        """Accepted chat.unfurl calls: where (channel+ts or unfurl_id+source), unfurls, metadata."""
        self.work_objects = True
        """False: the app has no Work Object previews enabled, and entity metadata is refused."""
        self.handlers: dict[str, Handler] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.delete": self._chat_delete,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.getPermalink": self._chat_get_permalink,
            "chat.unfurl": self._chat_unfurl,
            "conversations.replies": self._conversations_replies,
            "users.info": self._users_info,
            "views.open": self._views_open,
            "views.push": self._views_open,
            "views.update": self._views_update,
            "views.publish": self._views_publish,
            "files.getUploadURLExternal": self._files_get_upload_url,
            "files.completeUploadExternal": self._files_complete_upload,
            "files.info": self._files_info,
            "canvases.create": self._canvases_create,
            "canvases.access.set": self._canvases_access_set,
            "assistant.threads.setStatus": self._assistant_set_status,
            "agents.sessions.setStatus": self._agents_sessions_set_status,
            "agents.sessions.rename": self._agents_sessions_rename,
            "chat.startStream": self._chat_start_stream,
            "chat.appendStream": self._chat_append_stream,
            "chat.stopStream": self._chat_stop_stream,
            "reactions.add": self._reactions_add,
            "reactions.remove": self._reactions_remove,
        }
        self.used_trigger_ids: set[str] = set()
        self.private_metadata_json = True
        """Our app keeps JSON in `private_metadata`: anything else is rejected (and flagged)."""
        self._failures: dict[str, deque[_Failure]] = {}
        self._flaky: _Flaky | None = None
        self.faults: Counter[str] = Counter()
        """Random faults served by `flaky` mode, by kind ('429', '5xx', 'timeout', ...)."""
        self._activity = asyncio.Event()
        self._watches: list[tuple[Callable[[], bool], asyncio.Event]] = []
        self._ids = _Ids()
        self.app.router.add_route("*", "/api/{method}", self._handle_api)
        self.app.router.add_post("/upload/{file_id}", self._handle_upload)
        self.app.router.add_get("/files-pri/{team_file}/{name}", self._handle_download)
        self.app.router.add_post("/response_url/{key}", self._handle_response_url)

    # ------------------------------------------------------------------ public helpers

    @property
    def token(self) -> str:
        """The bot token (what tests should hand to `AsyncWebClient`); `tokens` may also hold
        others, e.g. the app token a Socket Mode fake adds."""
        return self.bot_token

    @property
    def api_url(self) -> str:
        """Base URL for `AsyncWebClient(base_url=...)`."""
        return f"{self.url}/api/"

    def calls_to(self, method: str) -> list[Call]:
        """All recorded calls of one Web API method, oldest first."""
        return [c for c in self.calls if c.method == method]

    def last_call(self, method: str) -> Call:
        """The most recent call of `method` (AssertionError if there was none)."""
        calls = self.calls_to(method)
        assert calls, f"no {method} call; saw {[c.method for c in self.calls]}"
        return calls[-1]

    async def wait_for(self, method: str, count: int = 1, *, within: float = DEADLINE_S) -> list[Call]:
        """Wait up to `within` seconds until `count` calls of `method` were answered."""

        def answered() -> int:
            return sum(c.response is not None for c in self.calls_to(method))

        await self.wait_until(lambda: answered() >= count, within=within)
        return self.calls_to(method)

    def once(self, predicate: Callable[[], bool]) -> asyncio.Event:
        """An event set as soon as `predicate()` holds (checked on every request). A model reply
        held on it (`Reply(hold=...)`) keeps a run from outpacing what its thread was shown: a
        busy machine's deliverer may otherwise send only the last of several status steps."""
        event = asyncio.Event()
        self._watches.append((predicate, event))
        self._touched()
        return event

    def _touched(self) -> None:
        self._activity.set()
        for predicate, event in self._watches:
            if not event.is_set() and predicate():
                event.set()

    async def wait_until(self, predicate: Callable[[], bool], *, within: float = DEADLINE_S) -> None:
        """Wait up to `within` seconds until `predicate()` holds, re-checking on every request."""
        try:
            async with asyncio.timeout(within):
                while not predicate():
                    self._activity.clear()
                    await self._activity.wait()
        except TimeoutError:
            seen = [c.method for c in self.calls]
            raise AssertionError(f"condition not met within {within}s; calls: {seen}") from None

    def fail_next(
        self,
        method: str,
        status: int = 429,
        *,
        retry_after: float | None = None,
        times: int = 1,
        error: str | None = None,
        processed: bool = False,
        matching: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        """Make the next `times` calls of `method` fail with `status` (200 + `error` also works).

        A 429 carries `Retry-After` (default 1 second) and the error `ratelimited`. With
        `processed`, Slack carries the call out first and only the answer is the failure (a
        post made, then a 500): the case an idempotency key has to handle. With `matching`,
        only calls whose arguments it accepts fail (one message's edits, not every edit).
        """
        default_error = {429: "ratelimited", 503: "service_unavailable"}.get(
            status, "internal_error" if status >= 500 else "fatal_error"
        )
        if status == 429 and retry_after is None:
            retry_after = 1
        failure = _Failure(status, error or default_error, retry_after, processed, matching)
        self._failures.setdefault(method, deque()).extend([failure] * times)

    def flaky(
        self,
        rate: float,
        *,
        seed: int = 0,
        methods: Collection[str] | None = None,
        weights: Mapping[str, float] | None = None,
        retry_after: float = 1.0,
        hang_s: float = 20.0,
        max_timeouts: int | None = None,
        processed_on_timeout: float = 0.5,
    ) -> None:
        """Fail a random `rate` of calls (seeded), on top of anything `fail_next` queued.

        A fault is a 429 with `Retry-After: retry_after`, a 5xx (500 or 503), or a timeout: the
        answer is held for `hang_s` seconds (longer than the client waits). A timeout is, with
        probability `processed_on_timeout`, one whose call was carried out before the answer got
        lost (a posted message stays posted) - the case an idempotency key has to handle.
        `weights` splits faults between '429', '5xx', 'timeout' and '5xx-after-processing' (a
        500 answered after the call was carried out) (default 45/45/10/0);
        `max_timeouts` caps the timeouts served; `methods` limits faults to those methods
        (default: every method but `auth.test`). `rate=0` turns the mode off. What was served
        is counted in `faults`.
        """
        if rate <= 0:
            self._flaky = None
            return
        self._flaky = _Flaky(
            rng=random.Random(seed),
            rate=rate,
            methods=frozenset(methods) if methods is not None else None,
            weights=dict(weights or {"429": 0.45, "5xx": 0.45, "timeout": 0.10}),
            retry_after=retry_after,
            hang_s=hang_s,
            max_timeouts=max_timeouts,
            processed_on_timeout=processed_on_timeout,
        )

    def add_message(
        self,
        channel: str,
        text: str,
        *,
        user: str = "U1",
        ts: str | None = None,
        thread_ts: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Seed a (user-authored) message into a channel or thread and return it."""
        message: dict[str, Any] = {"type": "message", "user": user, "text": text}
        message.update(extra)
        return self._store(channel, message, ts=ts, thread_ts=thread_ts)

    def add_file(
        self, name: str, content: bytes, *, user: str = "U1", mimetype: str | None = None
    ) -> dict[str, Any]:
        """A file a person uploaded; returns its object as a message event's `files` carry it."""
        file_id = self._ids.make("F")
        mimetype = mimetype or mimetypes.guess_type(name)[0] or "application/octet-stream"
        self.files[file_id] = {
            "id": file_id,
            "created": int(time.time()),
            "name": name,
            "title": name,
            "mimetype": mimetype,
            "filetype": name.rsplit(".", 1)[-1] if "." in name else "binary",
            "user": user,
            "size": len(content),
            "content": content,
        }
        return self._file_object(self.files[file_id])

    def messages_in(self, channel: str, thread_ts: str | None = None) -> list[dict[str, Any]]:
        """Stored messages of a channel, or of one thread (root first) when `thread_ts` is set."""
        messages = self.messages.get(channel, [])
        if thread_ts is None:
            return list(messages)
        return [m for m in messages if m["ts"] == thread_ts or m.get("thread_ts") == thread_ts]

    def response_url(self, key: str | None = None) -> str:
        """A `response_url` served by the fake; POSTs to it land in `responses`."""
        return f"{self.url}/response_url/{key or self._ids.make('R')}"

    def user_profile(self, user_id: str) -> dict[str, Any]:
        """The user object `users.info` answers for `user_id` (defaults merged with `users`)."""
        override = self.users.get(user_id) or {}
        tz = str(override.get("tz", "America/New_York"))
        user: dict[str, Any] = {
            "id": user_id,
            "team_id": self.team_id,
            "name": user_id.lower(),
            "real_name": f"User {user_id}",
            "deleted": False,
            "is_bot": user_id == self.bot_user_id,
            "is_admin": False,
            "is_owner": False,
            "tz": tz,
            "tz_label": tz,
            "tz_offset": _tz_offset(tz),
            "updated": 1_700_000_000,
            "profile": {
                "real_name": f"User {user_id}",
                "display_name": user_id.lower(),
                "email": f"{user_id.lower()}@example.com",
                "team": self.team_id,
            },
        }
        user.update(override)
        return user

    # ------------------------------------------------------------------ HTTP plumbing

    async def _handle_api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = await _read_args(request)
        token = _bearer(request.headers.get("Authorization")) or args.pop("token", None)
        call = Call(method, args, CIMultiDict(request.headers), token)
        self.calls.append(call)
        self._touched()  # waits on calls still unanswered (a gated one) see it arrive
        if delay := self.delay.get(method):
            await asyncio.sleep(delay)
        if gate := self.gates.get(method):
            await gate.wait()
        if gate := self.channel_gates.get(str(args.get("channel") or args.get("channel_id") or "")):
            await gate.wait()
        headers = {"x-oauth-scopes": ",".join(self.scopes)}
        fault = self._draw_fault(method)
        if fault in ("429", "5xx"):
            call.status, call.response = self._random_failure(fault, headers)
        elif fault == "5xx-after-processing":  # carried out, then the answer is a server error
            self._answer(call, headers)
            call.status, call.response = 500, {"ok": False, "error": "internal_error"}
        elif fault == "timeout":  # lost on the way: Slack never carried it out
            call.status, call.response = 504, {"ok": False, "error": "request_timeout"}
        else:  # no fault, or a timeout whose call was carried out before the answer got lost
            call.status, call.response = self._answer(call, headers)
        call.answered_at = time.monotonic()
        self._touched()
        if fault is not None and fault.startswith("timeout") and self._flaky is not None:
            await asyncio.sleep(self._flaky.hang_s)
        return web.json_response(call.response, status=call.status, headers=headers)

    def _draw_fault(self, method: str) -> str | None:
        if self._flaky is None or method == "auth.test" or self._failures.get(method):
            return None
        timeouts = self.faults["timeout"] + self.faults["timeout-after-processing"]
        fault = self._flaky.draw(method, timeouts)
        if fault is not None:
            self.faults[fault] += 1
        return fault

    def _random_failure(self, fault: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        assert self._flaky is not None
        if fault == "429":
            headers["Retry-After"] = f"{self._flaky.retry_after:g}"
            return 429, {"ok": False, "error": "ratelimited"}
        status = self._flaky.rng.choice((500, 503))
        return status, {
            "ok": False,
            "error": "internal_error" if status == 500 else "service_unavailable",
        }

    def _answer(self, call: Call, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        queue = self._failures.get(call.method)
        failure = _next_failure(queue, call.args) if queue else None
        if failure is not None:
            if failure.processed and (handler := self.handlers.get(call.method)) is not None:
                handler(call.args)
            if failure.retry_after is not None:
                headers["Retry-After"] = f"{failure.retry_after:g}"
            return failure.status, {"ok": False, "error": failure.error}
        if not call.token:
            return 200, {"ok": False, "error": "not_authed"}
        if call.token not in self.tokens:
            return 200, {"ok": False, "error": "invalid_auth"}
        if call.method in _CHANNEL_WRITES and self.archived:
            if (call.args.get("channel") or call.args.get("channel_id")) in self.archived:
                return 200, {"ok": False, "error": "is_archived"}
        handler = self.handlers.get(call.method)
        if handler is None:
            # Slack's answer, and a loud one here: a method the fake does not know is one the
            # code under test calls without a test having checked its arguments.
            self.problem(f"{call.method}: not a method the fake implements")
            return 200, {"ok": False, "error": "unknown_method"}
        try:
            return 200, {"ok": True, **handler(call.args)}
        except SlackError as exc:
            answer: dict[str, Any] = {"ok": False, "error": exc.error}
            if exc.messages:
                # Slack rejected what the app sent: a bug in the code under test.
                self.problem(f"{call.method}: {exc}")
                answer["response_metadata"] = {"messages": exc.messages}
            return 200, answer

    async def _handle_upload(self, request: web.Request) -> web.Response:
        file = self.files.get(request.match_info["file_id"])
        if file is None:
            return web.Response(status=404, text="Not Found")
        content = await request.read()
        file["content"] = content
        file["size"] = len(content)
        return web.Response(text=f"OK - {len(content)}", content_type="text/plain")

    async def _handle_download(self, request: web.Request) -> web.Response:
        """A file's `url_private`: served only with a token in the Authorization header."""
        token = _bearer(request.headers.get("Authorization"))
        team, _, file_id = request.match_info["team_file"].partition("-")
        file = self.files.get(file_id)
        if token not in self.tokens:
            # Slack sends a browser to its sign-in page: HTML, not the file.
            return web.Response(text="<html>sign in</html>", content_type="text/html")
        if file is None or file.get("content") is None or team != self.team_id:
            return web.Response(status=404, text="Not Found")
        self.downloads.append(file_id)
        self._touched()
        return web.Response(body=file["content"], content_type=file["mimetype"])

    async def _handle_response_url(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw) if raw else {}
        self.responses.append(ResponseUrlPost(request.match_info["key"], body))
        self._touched()
        return web.Response(text="ok", content_type="text/html")

    # ------------------------------------------------------------------ state helpers

    def _store(
        self,
        channel: str,
        message: dict[str, Any],
        *,
        ts: str | None = None,
        thread_ts: str | None = None,
    ) -> dict[str, Any]:
        message["ts"] = ts or self._ids.ts()
        if thread_ts:
            message["thread_ts"] = thread_ts
            parent = self._find(channel, thread_ts)
            if parent is not None and parent is not message:
                parent["thread_ts"] = thread_ts
                parent["reply_count"] = parent.get("reply_count", 0) + 1
                parent["latest_reply"] = message["ts"]
                users = parent.setdefault("reply_users", [])
                if message.get("user") and message["user"] not in users:
                    users.append(message["user"])
        self.messages.setdefault(channel, []).append(message)
        return message

    def _find(self, channel: str, ts: str) -> dict[str, Any] | None:
        return next((m for m in self.messages.get(channel, []) if m["ts"] == ts), None)

    def _bot_message(self, args: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": "message",
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "team": self.team_id,
            "text": args.get("text") or "",
        }
        for key in ("blocks", "attachments", "metadata"):
            if args.get(key):
                message[key] = args[key]
        return message

    def _file_object(self, file: dict[str, Any]) -> dict[str, Any]:
        public = {k: v for k, v in file.items() if k != "content"}
        public["permalink"] = (
            f"https://test.slack.com/docs/{self.team_id}/{file['id']}"
            if file.get("filetype") == "quip"
            else f"https://test.slack.com/files/{self.bot_user_id}/{file['id']}"
        )
        public["url_private"] = f"{self.url}/files-pri/{self.team_id}-{file['id']}/{file['name']}"
        return public

    # ------------------------------------------------------------------ method handlers

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": "https://test.slack.com/",
            "team": "Test Team",
            "user": "delegate",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _chat_post_message(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = _require(args, "channel", error="channel_not_found")
        if not (args.get("text") or args.get("blocks") or args.get("attachments")):
            raise SlackError("no_text")
        check_message(args)
        message = self._store(channel, self._bot_message(args), thread_ts=args.get("thread_ts"))
        return {"channel": channel, "ts": message["ts"], "message": copy.deepcopy(message)}

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = _require(args, "channel", error="channel_not_found")
        message = self._find(channel, _require(args, "ts", error="message_not_found"))
        if message is None:
            raise SlackError("message_not_found")
        if message.get("streaming"):
            # A live stream changes through chat.appendStream / chat.stopStream only.
            raise SlackError("cant_update_message")
        check_message(args)
        for key in ("text", "blocks", "attachments", "metadata"):
            if key in args:
                message[key] = args[key]
        message["edited"] = {"user": self.bot_user_id, "ts": self._ids.ts()}
        return {
            "channel": channel,
            "ts": message["ts"],
            "text": message.get("text", ""),
            "message": copy.deepcopy(message),
        }

    def _chat_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = _require(args, "channel", error="channel_not_found")
        message = self._find(channel, _require(args, "ts", error="message_not_found"))
        if message is None:
            raise SlackError("message_not_found")
        self.messages[channel].remove(message)
        return {"channel": channel, "ts": message["ts"]}

    def _chat_post_ephemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = _require(args, "channel", error="channel_not_found")
        user = _require(args, "user", error="user_not_in_channel")
        check_message(args)
        message = {**self._bot_message(args), "ts": self._ids.ts(), "channel": channel}
        message["recipient"] = user
        if args.get("thread_ts"):
            message["thread_ts"] = args["thread_ts"]
        self.ephemerals.append(message)
        return {"message_ts": message["ts"]}

    def _chat_get_permalink(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = _require(args, "channel", error="channel_not_found")
        ts = _require(args, "message_ts", error="message_not_found")
        return {
            "channel": channel,
            "permalink": f"https://test.slack.com/archives/{channel}/p{ts.replace('.', '')}",
        }

    def _chat_unfurl(self, args: dict[str, Any]) -> dict[str, Any]:
        # Either channel+ts or unfurl_id+source; either unfurls or metadata (chat.unfurl docs).
        if "links:write" not in self.scopes:
            raise SlackError("missing_scope")
        by_message = bool(args.get("channel")) and bool(args.get("ts"))
        by_unfurl_id = bool(args.get("unfurl_id")) and bool(args.get("source"))
        if by_message == by_unfurl_id:
            raise SlackError("invalid_arguments", ["pass channel and ts, or unfurl_id and source"])
        if by_unfurl_id and args["source"] not in ("composer", "conversations_history"):
            raise SlackError("invalid_source")
        unfurls, metadata = args.get("unfurls"), args.get("metadata")
        if not unfurls and not metadata:
            raise SlackError("invalid_arguments", ["unfurls or metadata is required"])
        for url, unfurl in (unfurls or {}).items():
            if not isinstance(unfurl, dict):
                raise SlackError("invalid_unfurls_format", [f"{url}: not an object"])
            if "blocks" in unfurl:
                errors = _block_errors(unfurl["blocks"], 50, f"unfurls[{url}].blocks")
                if errors:
                    raise SlackError("invalid_blocks", errors)
        warning: dict[str, Any] = {}
        if metadata and not self.work_objects:
            # As Slack does: the entities are dropped with a warning, the unfurls still shown.
            metadata, warning = None, {"warning": "work_objects_not_enabled"}
            args = {k: v for k, v in args.items() if k != "metadata"}
        if metadata:
            for i, entity in enumerate(metadata.get("entities") or []):
                where = f"metadata.entities[{i}]"
                missing = [
                    key
                    for key in ("entity_type", "entity_payload", "external_ref", "url", "app_unfurl_url")
                    if not entity.get(key)
                ]
                if missing:
                    raise SlackError("invalid_metadata", [f"{where}: missing {missing}"])
                if entity["entity_type"] not in _ENTITY_TYPES:
                    raise SlackError("invalid_metadata", [f"{where}: unknown entity_type"])
                title = (entity["entity_payload"].get("attributes") or {}).get("title") or {}
                if not title.get("text"):
                    raise SlackError("invalid_metadata", [f"{where}: attributes.title.text missing"])
        self.unfurls.append(
            {
                key: args[key]
                for key in ("channel", "ts", "unfurl_id", "source", "unfurls", "metadata")
                if key in args
            }
        )
        return warning

    def _conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = _require(args, "channel", error="channel_not_found")
        ts = _require(args, "ts", error="thread_not_found")
        thread = sorted(self.messages_in(channel, ts), key=lambda m: float(m["ts"]))
        if not thread:
            raise SlackError("thread_not_found")
        return {
            "messages": copy.deepcopy(thread),
            "has_more": False,
            "response_metadata": {"next_cursor": ""},
        }

    def _users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user_id = _require(args, "user", error="user_not_found")
        if user_id in self.users and self.users[user_id] is None:
            raise SlackError("user_not_found")
        return {"user": self.user_profile(user_id)}

    def _new_view(self, view: dict[str, Any], view_id: str | None = None) -> dict[str, Any]:
        stored = {
            "type": "modal",
            "blocks": [],
            "private_metadata": "",
            "callback_id": "",
            "external_id": "",
            **view,
            "id": view_id or self._ids.make("V"),
            "team_id": self.team_id,
            "app_id": self.app_id,
            "bot_id": self.bot_id,
            "state": {"values": {}},
            "hash": f"{time.time():.6f}.{uuid.uuid4().hex[:8]}",
            "previous_view_id": None,
            "root_view_id": view_id,
        }
        stored["root_view_id"] = stored["root_view_id"] or stored["id"]
        self.views[stored["id"]] = stored
        return stored

    def _views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        trigger_id = _require(args, "trigger_id", error="invalid_arguments")
        view = _require(args, "view", error="invalid_arguments")
        if trigger_id in self.used_trigger_ids:
            # Single use (and Slack's expire after 3 s; the fake does not time them out).
            self.problem(f"views.open/push: trigger_id {trigger_id} was already used")
            raise SlackError("expired_trigger_id")
        self._check_view(view)
        self.used_trigger_ids.add(trigger_id)
        return {"view": copy.deepcopy(self._new_view(view))}

    def _check_view(self, view: dict[str, Any]) -> None:
        check_view(view)
        metadata = view.get("private_metadata")
        if self.private_metadata_json and metadata:
            try:
                json.loads(metadata)
            except ValueError as exc:
                raise SlackError(
                    "invalid_arguments",
                    [
                        f"[ERROR] private_metadata is not valid JSON ({exc}) "
                        "[json-pointer:/view/private_metadata]"
                    ],
                ) from None

    def _views_update(self, args: dict[str, Any]) -> dict[str, Any]:
        view = _require(args, "view", error="invalid_arguments")
        current = self.views.get(args.get("view_id") or "")
        if current is None and args.get("external_id"):
            current = next(
                (v for v in self.views.values() if v.get("external_id") == args["external_id"]),
                None,
            )
        if current is None:
            raise SlackError("not_found")
        if args.get("hash") and args["hash"] != current["hash"]:
            raise SlackError("hash_conflict")
        self._check_view(view)
        return {"view": copy.deepcopy(self._new_view(view, current["id"]))}

    def _views_publish(self, args: dict[str, Any]) -> dict[str, Any]:
        user_id = _require(args, "user_id", error="invalid_arguments")
        self._check_view(_require(args, "view", error="invalid_arguments"))
        view = self._new_view(args["view"])
        self.home_views[user_id] = view
        return {"view": copy.deepcopy(view)}

    def _files_get_upload_url(self, args: dict[str, Any]) -> dict[str, Any]:
        filename = _require(args, "filename", error="invalid_arguments")
        length = int(_require(args, "length", error="invalid_arguments"))
        file_id = self._ids.make("F")
        mimetype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        self.files[file_id] = {
            "id": file_id,
            "created": int(time.time()),
            "name": filename,
            "title": filename,
            "mimetype": mimetype,
            "filetype": filename.rsplit(".", 1)[-1] if "." in filename else "binary",
            "user": self.bot_user_id,
            "size": length,
            "content": None,
        }
        return {"upload_url": f"{self.url}/upload/{file_id}", "file_id": file_id}

    def _files_complete_upload(self, args: dict[str, Any]) -> dict[str, Any]:
        entries = _require(args, "files", error="invalid_arguments")
        done = []
        for entry in entries:
            file = self.files.get(entry.get("id", ""))
            if file is None:
                raise SlackError("file_not_found")
            if file["content"] is None:
                raise SlackError("file_upload_not_complete")
            file["title"] = entry.get("title") or file["name"]
            done.append(self._file_object(file))
        channels = [args["channel_id"]] if args.get("channel_id") else []
        channels += [c for c in str(args.get("channels") or "").split(",") if c]
        for channel in channels:
            share = {**self._bot_message({"text": args.get("initial_comment")}), "files": done}
            self._store(channel, share, thread_ts=args.get("thread_ts"))
        return {"files": done}

    def _files_info(self, args: dict[str, Any]) -> dict[str, Any]:
        if "files:read" not in self.scopes:
            raise SlackError("missing_scope")
        file = self.files.get(_require(args, "file", error="file_not_found"))
        if file is None:
            raise SlackError("file_not_found")
        return {"file": self._file_object(file), "comments": [], "response_metadata": {}}

    def _canvases_create(self, args: dict[str, Any]) -> dict[str, Any]:
        if "canvases:write" not in self.scopes:
            raise SlackError("missing_scope")
        content = args.get("document_content") or {}
        if content and (content.get("type") != "markdown" or "markdown" not in content):
            raise SlackError("invalid_arguments", ["document_content must be markdown"])
        canvas_id = self._ids.make("F")
        markdown = str(content.get("markdown", ""))
        self.canvases[canvas_id] = {"title": args.get("title") or "", "markdown": markdown}
        self.files[canvas_id] = {
            "id": canvas_id,
            "created": int(time.time()),
            "name": args.get("title") or "Untitled",
            "title": args.get("title") or "Untitled",
            "mimetype": "application/vnd.slack-docs",
            "filetype": "quip",
            "user": self.bot_user_id,
            "size": len(markdown.encode()),
            "content": markdown.encode(),
        }
        return {"canvas_id": canvas_id}

    def _canvases_access_set(self, args: dict[str, Any]) -> dict[str, Any]:
        canvas = self.canvases.get(_require(args, "canvas_id", error="canvas_not_found"))
        if canvas is None:
            raise SlackError("canvas_not_found")
        if args.get("access_level") not in ("read", "write", "owner"):
            raise SlackError("invalid_arguments", ["access_level must be read, write or owner"])
        channels = [c for c in str(args.get("channel_ids") or "").split(",") if c]
        canvas.setdefault("channels", {}).update(dict.fromkeys(channels, args["access_level"]))
        return {}

    def _assistant_set_status(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = _require(args, "channel_id", error="channel_not_found")
        thread_ts = _require(args, "thread_ts", error="invalid_arguments")
        self.statuses[(channel, thread_ts)] = str(args.get("status") or "")
        return {}

    # The agent surface (docs.slack.dev, "Agent sessions", chat.startStream/appendStream/
    # stopStream; argument names as slack_sdk 3.48 sends them).

    def agent(self, declared: bool = True) -> None:
        """Declare the app an agent (Slack adds `assistant:write` to it), or undeclare it."""
        if declared and "assistant:write" not in self.scopes:
            self.scopes.append("assistant:write")
        if not declared and "assistant:write" in self.scopes:
            self.scopes.remove("assistant:write")

    def stop_pressed(self, channel: str, thread_ts: str, user: str) -> dict[str, Any]:
        """Someone pressed the session's stop button: Slack stops the app's live streams in the
        thread and sends this `agent_session_stopped` event (the session status stays as it is:
        the app sets it)."""
        stopped = []
        for message in self.messages.get(channel, []):
            if message.get("streaming") and message.get("thread_ts") == thread_ts:
                message["streaming"] = False
                stopped.append(message["ts"])
        return {
            "type": "agent_session_stopped",
            "channel": channel,
            "thread_ts": thread_ts,
            "user": user,
            "streaming_message_ts": stopped,
            "event_ts": self._ids.ts(),
        }

    def streams_in(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        """The streamed messages of a thread (live or stopped), oldest first."""
        return [
            m
            for m in self.messages.get(channel, [])
            if "task_display_mode" in m and m.get("thread_ts") == thread_ts
        ]

    def _need(self, *scopes: str) -> None:
        if not set(scopes) <= set(self.scopes):
            raise SlackError("missing_scope")

    def _session(self, channel: str, thread_ts: str, status: str, title: str | None) -> None:
        session = self.sessions.get((channel, thread_ts))
        if session is None:  # created by its first status; the title only counts then
            session = self.sessions[(channel, thread_ts)] = {
                "status": status,
                "title": title or "",
                "history": [],
            }
        session["status"] = status
        session["history"].append(status)

    def _agents_sessions_set_status(self, args: dict[str, Any]) -> dict[str, Any]:
        # Only apps declared as agents create sessions; thread-based ones need chat:write.
        self._need("chat:write", "assistant:write")
        status = args.get("status")
        if status not in SESSION_STATUSES:
            raise SlackError("invalid_arguments", [f"[ERROR] status must be one of {SESSION_STATUSES}"])
        channel = _require(args, "channel_id", error="channel_not_found")
        thread_ts = args.get("thread_ts")
        if not thread_ts:
            raise SlackError("invalid_arguments", ["[ERROR] thread_ts is required for a thread"])
        title = args.get("title")
        if title is not None and not 1 <= len(str(title)) <= SESSION_TITLE_MAX:
            raise SlackError("invalid_arguments", [f"[ERROR] title must be 1-{SESSION_TITLE_MAX} characters"])
        self._session(channel, str(thread_ts), str(status), title)
        session = self.sessions[(channel, str(thread_ts))]
        return {"status": session["status"], "title": session["title"]}

    def _agents_sessions_rename(self, args: dict[str, Any]) -> dict[str, Any]:
        self._need("chat:write", "assistant:write")
        channel = _require(args, "channel_id", error="channel_not_found")
        title = str(args.get("title") or "")
        if not 1 <= len(title) <= SESSION_TITLE_MAX:
            raise SlackError("invalid_arguments", [f"[ERROR] title must be 1-{SESSION_TITLE_MAX} characters"])
        session = self.sessions.get((channel, str(args.get("thread_ts") or "")))
        if session is None:
            raise SlackError("session_not_found")
        session["title"] = title
        return {"title": title}

    def _streaming_method(self) -> None:
        if not self.streaming:
            raise SlackError("unknown_method")
        self._need("chat:write")

    def _stream(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = _require(args, "channel", error="channel_not_found")
        message = self._find(channel, _require(args, "ts", error="message_not_found"))
        if message is None:
            raise SlackError("message_not_found")
        if not message.get("streaming"):
            raise SlackError("message_not_in_streaming_state")
        return message

    def _chat_start_stream(self, args: dict[str, Any]) -> dict[str, Any]:
        self._streaming_method()
        channel = _require(args, "channel", error="channel_not_found")
        if not channel.startswith("D"):  # a channel stream names its reader (method reference)
            if not args.get("recipient_user_id"):
                raise SlackError("missing_recipient_user_id")
            if not args.get("recipient_team_id"):
                raise SlackError("missing_recipient_team_id")
        errors: list[str] = []
        mode = args.get("task_display_mode", "timeline")
        if mode not in ("timeline", "plan"):
            errors.append("[ERROR] task_display_mode must be timeline or plan")
        _check_chunks(args)
        errors += _stream_errors(args)
        if errors:
            raise SlackError("invalid_arguments", errors)
        message = self._bot_message({})
        message.update(streaming=True, task_display_mode=mode, tasks={}, markdown="")
        message["recipient"] = args.get("recipient_user_id")
        self._store(channel, message, thread_ts=args.get("thread_ts"))
        _apply_chunks(message, args)
        return {"channel": channel, "ts": message["ts"]}

    def _chat_append_stream(self, args: dict[str, Any]) -> dict[str, Any]:
        self._streaming_method()
        message = self._stream(args)
        _check_chunks(args)
        if not (args.get("markdown_text") or args.get("chunks")):
            raise SlackError("no_text")
        errors = _stream_errors(args)
        if errors:
            raise SlackError("invalid_arguments", errors)
        _apply_chunks(message, args)
        return {"channel": args["channel"], "ts": message["ts"]}

    def _chat_stop_stream(self, args: dict[str, Any]) -> dict[str, Any]:
        self._streaming_method()
        message = self._stream(args)
        _check_chunks(args)
        errors = _stream_errors(args)
        status = args.get("session_status")
        if status is not None and status not in SESSION_STATUSES:
            errors.append(f"[ERROR] session_status must be one of {SESSION_STATUSES}")
        if errors:
            raise SlackError("invalid_arguments", errors)
        check_message({"blocks": args.get("blocks")})
        _apply_chunks(message, args)
        for key in ("blocks", "metadata"):
            if args.get(key):
                message[key] = args[key]
        message["streaming"] = False
        if status is not None and message.get("thread_ts"):
            # The stream's thread carries the session (created by it if need be).
            self._session(args["channel"], message["thread_ts"], str(status), None)
        return {"channel": args["channel"], "ts": message["ts"], "message": copy.deepcopy(message)}

    def _reactions_add(self, args: dict[str, Any]) -> dict[str, Any]:
        key = (
            _require(args, "channel", error="channel_not_found"),
            _require(args, "timestamp", error="message_not_found"),
            _require(args, "name", error="invalid_name"),
        )
        if key in self.reactions:
            raise SlackError("already_reacted")
        self.reactions.append(key)
        return {}

    def _reactions_remove(self, args: dict[str, Any]) -> dict[str, Any]:
        key = (
            _require(args, "channel", error="channel_not_found"),
            _require(args, "timestamp", error="message_not_found"),
            _require(args, "name", error="invalid_name"),
        )
        if key not in self.reactions:
            raise SlackError("no_reaction")
        self.reactions.remove(key)
        return {}


# ---------------------------------------------------------------------- Block Kit limits

MESSAGE_TEXT_MAX = 40_000
MESSAGE_BLOCKS_MAX = 50
VIEW_BLOCKS_MAX = 100


SESSION_STATUSES = ("active", "processing", "suspended", "closed")
SESSION_TITLE_MAX = 200
STREAM_MARKDOWN_MAX = 12_000
"""chat.*Stream's `markdown_text` limit (and a markdown chunk's)."""
MARKDOWN_BLOCKS_MAX = 12_000
"""The markdown block's limit, and the cumulative one of all markdown blocks of a message."""
TASK_STATUSES = ("pending", "in_progress", "complete", "error")


def _stream_errors(args: Mapping[str, Any]) -> list[str]:
    text = args.get("markdown_text")
    if isinstance(text, str) and len(text) > STREAM_MARKDOWN_MAX:
        return [f"[ERROR] markdown_text is {len(text)} characters, over 12000"]
    return []


def _check_chunks(args: Mapping[str, Any]) -> None:
    """Raise what chat.*Stream answer to malformed `chunks`: `invalid_chunks` (Slack's method
    reference for all three), not `invalid_arguments`."""
    errors: list[str] = []
    chunks = args.get("chunks")
    if chunks is not None and not isinstance(chunks, list):
        errors.append("[ERROR] chunks must be an array")
    for i, chunk in enumerate(chunks if isinstance(chunks, list) else []):
        kind = (chunk or {}).get("type")
        if kind == "markdown_text":
            if len(str(chunk.get("text") or "")) > STREAM_MARKDOWN_MAX:
                errors.append(f"[ERROR] chunks/{i}/text is over 12000 characters")
        elif kind == "task_update":
            if not chunk.get("id") or not chunk.get("title"):
                errors.append(f"[ERROR] chunks/{i}: id and title are required")
            if chunk.get("status") not in TASK_STATUSES:
                errors.append(f"[ERROR] chunks/{i}/status must be one of {TASK_STATUSES}")
        elif kind != "plan_update":
            errors.append(f"[ERROR] chunks/{i}: unknown chunk type {kind!r}")
    if errors:
        raise SlackError("invalid_chunks", errors)


def _apply_chunks(message: dict[str, Any], args: Mapping[str, Any]) -> None:
    """What a stream shows: its markdown so far, and its tasks by id (a task_update with a
    known id updates that task rather than adding one)."""
    if args.get("markdown_text"):
        message["markdown"] += str(args["markdown_text"])
    for chunk in args.get("chunks") or []:
        if chunk["type"] == "markdown_text":
            message["markdown"] += str(chunk.get("text") or "")
        elif chunk["type"] == "task_update":
            message["tasks"][str(chunk["id"])] = {
                k: chunk[k] for k in ("title", "status", "details", "output") if k in chunk
            }
        elif chunk["type"] == "plan_update":
            message["plan_title"] = chunk.get("title")


def check_message(args: Mapping[str, Any]) -> None:
    """Raise what Slack answers to a message over its limits (`msg_too_long`, `invalid_blocks`)."""
    text = args.get("text")
    if isinstance(text, str) and len(text) > MESSAGE_TEXT_MAX:
        raise SlackError("msg_too_long", [f"[ERROR] text is {len(text)} characters, over 40000"])
    blocks = args.get("blocks")
    if blocks:
        errors = _block_errors(blocks, MESSAGE_BLOCKS_MAX, "/blocks")
        if errors:
            raise SlackError("invalid_blocks", errors)


def check_view(view: Mapping[str, Any]) -> None:
    """Raise what `views.*` answers to a view over Slack's limits (`invalid_arguments`)."""
    errors: list[str] = []
    kind = view.get("type")
    if kind not in ("modal", "home"):
        errors.append(f"[ERROR] type must be modal or home, not {kind!r} [json-pointer:/view/type]")
    if kind == "modal":
        if not isinstance(view.get("title"), dict):
            errors.append("[ERROR] missing required field: title [json-pointer:/view/title]")
        for key in ("title", "submit", "close"):
            if key in view:
                errors += _text_errors(view[key], 24, f"/view/{key}", plain_only=True)
    for key in ("callback_id", "external_id"):
        _too_long(errors, view.get(key), 255, f"/view/{key}")
    _too_long(errors, view.get("private_metadata"), 3000, "/view/private_metadata")
    errors += _block_errors(view.get("blocks") or [], VIEW_BLOCKS_MAX, "/view/blocks")
    if errors:
        raise SlackError("invalid_arguments", errors)


def _too_long(errors: list[str], value: object, limit: int, where: str) -> None:
    if isinstance(value, str) and len(value) > limit:
        errors.append(
            f"[ERROR] must be less than {limit + 1} characters (is {len(value)}) "
            f"[json-pointer:{where}]"
        )


def _text_errors(obj: object, limit: int, where: str, *, plain_only: bool = False) -> list[str]:
    if not isinstance(obj, dict) or obj.get("type") not in ("plain_text", "mrkdwn"):
        return [f"[ERROR] must be a text object [json-pointer:{where}]"]
    if plain_only and obj["type"] != "plain_text":
        return [f"[ERROR] must be plain_text [json-pointer:{where}/type]"]
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        return [f"[ERROR] must be at least 1 character [json-pointer:{where}/text]"]
    errors: list[str] = []
    _too_long(errors, text, limit, f"{where}/text")
    return errors


def _element_errors(element: object, where: str) -> list[str]:
    if not isinstance(element, dict):
        return [f"[ERROR] must be an object [json-pointer:{where}]"]
    errors: list[str] = []
    _too_long(errors, element.get("action_id"), 255, f"{where}/action_id")
    kind = element.get("type")
    if kind == "button":
        errors += _text_errors(element.get("text"), 75, f"{where}/text", plain_only=True)
        _too_long(errors, element.get("value"), 2000, f"{where}/value")
        _too_long(errors, element.get("url"), 3000, f"{where}/url")
    if kind == "plain_text_input":
        max_length = element.get("max_length", 3000)
        if not isinstance(max_length, int) or not 1 <= max_length <= 3000:
            errors.append(f"[ERROR] must be between 1 and 3000 [json-pointer:{where}/max_length]")
            max_length = 3000
        _too_long(errors, element.get("initial_value"), max_length, f"{where}/initial_value")
    options = element.get("options")
    if isinstance(options, list):
        if len(options) > 100:
            errors.append(f"[ERROR] no more than 100 items allowed [json-pointer:{where}/options]")
        for k, option in enumerate(options):
            errors += _text_errors((option or {}).get("text"), 75, f"{where}/options/{k}/text")
            _too_long(errors, (option or {}).get("value"), 150, f"{where}/options/{k}/value")
    return errors


def _context_action_errors(element: object, where: str) -> list[str]:
    """A context_actions element as Slack checks it: the feedback buttons element (both
    buttons required; plain_text text up to 75, value up to 2000, accessibility_label up to 75)
    or an icon button."""
    if not isinstance(element, dict):
        return [f"[ERROR] must be an object [json-pointer:{where}]"]
    errors: list[str] = []
    _too_long(errors, element.get("action_id"), 255, f"{where}/action_id")
    kind = element.get("type")
    if kind == "feedback_buttons":
        for side in ("positive_button", "negative_button"):
            button = element.get(side)
            if not isinstance(button, dict):
                errors.append(f"[ERROR] missing required field: {side} [json-pointer:{where}]")
                continue
            errors += _text_errors(button.get("text"), 75, f"{where}/{side}/text", plain_only=True)
            value = button.get("value")
            if not isinstance(value, str) or not value:
                errors.append(f"[ERROR] missing required field: value [json-pointer:{where}/{side}]")
            _too_long(errors, value, 2000, f"{where}/{side}/value")
            _too_long(errors, button.get("accessibility_label"), 75, f"{where}/{side}/accessibility_label")
    elif kind == "icon_button":
        errors += _text_errors(element.get("text"), 75, f"{where}/text", plain_only=True)
        if not isinstance(element.get("icon"), str):
            errors.append(f"[ERROR] missing required field: icon [json-pointer:{where}]")
        _too_long(errors, element.get("value"), 2000, f"{where}/value")
    else:
        errors.append(
            f"[ERROR] must be feedback_buttons or icon_button, not {kind!r} "
            f"[json-pointer:{where}/type]"
        )
    return errors


def _block_errors(blocks: object, limit: int, where: str) -> list[str]:
    if not isinstance(blocks, list):
        return [f"[ERROR] must be an array [json-pointer:{where}]"]
    errors: list[str] = []
    if len(blocks) > limit:
        errors.append(f"[ERROR] no more than {limit} items allowed [json-pointer:{where}]")
    block_ids: set[str] = set()
    markdown = sum(
        len(b.get("text") or "") for b in blocks if isinstance(b, dict) and b.get("type") == "markdown"
    )
    if markdown > MARKDOWN_BLOCKS_MAX:
        errors.append(
            f"[ERROR] markdown blocks hold {markdown} characters together, over 12000 "
            f"[json-pointer:{where}]"
        )
    for i, block in enumerate(blocks):
        at = f"{where}/{i}"
        if not isinstance(block, dict):
            errors.append(f"[ERROR] must be an object [json-pointer:{at}]")
            continue
        block_id = block.get("block_id")
        if isinstance(block_id, str):
            _too_long(errors, block_id, 255, f"{at}/block_id")
            if block_id in block_ids:
                errors.append(f"[ERROR] duplicate block_id {block_id!r} [json-pointer:{at}]")
            block_ids.add(block_id)
        kind = block.get("type")
        if kind == "section":
            if "text" not in block and "fields" not in block:
                errors.append(f"[ERROR] must provide text or fields [json-pointer:{at}]")
            if "text" in block:
                errors += _text_errors(block["text"], 3000, f"{at}/text")
            fields = block.get("fields") or []
            if len(fields) > 10:
                errors.append(f"[ERROR] no more than 10 items allowed [json-pointer:{at}/fields]")
            for k, item in enumerate(fields):
                errors += _text_errors(item, 2000, f"{at}/fields/{k}")
            if "accessory" in block:
                errors += _element_errors(block["accessory"], f"{at}/accessory")
        elif kind == "header":
            errors += _text_errors(block.get("text"), 150, f"{at}/text", plain_only=True)
        elif kind == "actions":
            elements = block.get("elements") or []
            if not elements or len(elements) > 25:
                errors.append(f"[ERROR] must hold 1 to 25 items [json-pointer:{at}/elements]")
            for k, element in enumerate(elements):
                errors += _element_errors(element, f"{at}/elements/{k}")
        elif kind == "context":
            elements = block.get("elements") or []
            if not elements or len(elements) > 10:
                errors.append(f"[ERROR] must hold 1 to 10 items [json-pointer:{at}/elements]")
            for k, element in enumerate(elements):
                if isinstance(element, dict) and element.get("type") in ("plain_text", "mrkdwn"):
                    errors += _text_errors(element, 3000, f"{at}/elements/{k}")
        elif kind == "context_actions":
            # docs.slack.dev/reference/block-kit/blocks/context-actions-block: 1 to 5 elements,
            # each feedback_buttons or icon_button.
            elements = block.get("elements") or []
            if not elements or len(elements) > 5:
                errors.append(f"[ERROR] must hold 1 to 5 items [json-pointer:{at}/elements]")
            for k, element in enumerate(elements):
                errors += _context_action_errors(element, f"{at}/elements/{k}")
        elif kind == "markdown":
            text = block.get("text")
            if not isinstance(text, str) or not text:
                errors.append(f"[ERROR] must be at least 1 character [json-pointer:{at}/text]")
            else:
                _too_long(errors, text, MARKDOWN_BLOCKS_MAX, f"{at}/text")
        elif kind == "input":
            errors += _text_errors(block.get("label"), 2000, f"{at}/label", plain_only=True)
            if "hint" in block:
                errors += _text_errors(block["hint"], 2000, f"{at}/hint", plain_only=True)
            errors += _element_errors(block.get("element"), f"{at}/element")
    return errors


def _require(args: Mapping[str, Any], name: str, *, error: str) -> Any:
    value = args.get(name)
    if value in (None, ""):
        raise SlackError(error)
    return value


def _next_failure(queue: deque[_Failure], args: dict[str, Any]) -> _Failure | None:
    """Take the first failure queued for a call with these arguments."""
    for position, failure in enumerate(queue):
        if failure.matching is None or failure.matching(args):
            del queue[position]
            return failure
    return None


def _bearer(header: str | None) -> str | None:
    if header and header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return None


def _tz_offset(tz: str) -> int:
    try:
        offset = datetime.now(ZoneInfo(tz)).utcoffset()
    except (ZoneInfoNotFoundError, ValueError):
        return 0
    return int(offset.total_seconds()) if offset is not None else 0


async def _read_args(request: web.Request) -> dict[str, Any]:
    """Merge query-string, form, multipart and JSON arguments the way Slack does."""
    args: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        raw = await request.read()
        body = json.loads(raw) if raw else {}
        if isinstance(body, dict):
            args.update(body)
    elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        for key, value in form.items():
            if isinstance(value, web.FileField):
                args[key] = value.file.read()
            else:
                args[key] = value if isinstance(value, str) else bytes(value)
    for key in _JSON_ARGS & args.keys():
        if isinstance(args[key], str) and args[key][:1] in ("[", "{"):
            args[key] = json.loads(args[key])
    return args


# ---------------------------------------------------------------------- signed requests


class SlackSender:
    """Sends correctly signed Slack requests (events, commands, interactivity) to a Bolt app.

    Pass `slack=fake_slack` so default `response_url`s point at that fake (never the internet).
    """

    def __init__(
        self,
        bot_url: str,
        signing_secret: str,
        *,
        slack: FakeSlack | None = None,
        path: str = "/slack/events",
        team_id: str = "T1",
        api_app_id: str = "A1",
        bot_user_id: str = "UBOT",
    ) -> None:
        self.url = bot_url.rstrip("/") + path
        self.signing_secret = signing_secret
        self.slack = slack
        self.team_id = team_id
        self.api_app_id = api_app_id
        self.bot_user_id = bot_user_id
        self._ids = _Ids(micros=itertools.count(int(time.time() * 1_000_000), 100))

    # ------------------------------------------------------------------ transport

    async def post(
        self,
        body: str,
        content_type: str,
        *,
        timestamp: int | str | None = None,
        bad_signature: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, str]:
        """POST a raw body with Slack's signature headers; returns (status, body text)."""
        ts = str(int(time.time()) if timestamp is None else timestamp)
        signature = SignatureVerifier(self.signing_secret).generate_signature(
            timestamp=ts, body=body
        )
        assert signature is not None
        if bad_signature:
            signature = signature[:-4] + ("0000" if not signature.endswith("0000") else "1111")
        all_headers: CIMultiDict[str] = CIMultiDict(
            {
                "Content-Type": content_type,
                "X-Slack-Request-Timestamp": ts,
                "X-Slack-Signature": signature,
            }
        )
        all_headers.update(headers or {})
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.url, data=body.encode(), headers=all_headers) as resp,
        ):
            return resp.status, await resp.text()

    async def post_json(self, payload: dict[str, Any], **kwargs: Any) -> tuple[int, str]:
        """POST a JSON body (Events API style)."""
        return await self.post(json.dumps(payload), "application/json", **kwargs)

    async def post_form(self, fields: Mapping[str, str], **kwargs: Any) -> tuple[int, str]:
        """POST a form-encoded body (slash command / interactivity style)."""
        return await self.post(urlencode(fields), "application/x-www-form-urlencoded", **kwargs)

    # ------------------------------------------------------------------ Events API

    async def event(
        self,
        event: dict[str, Any],
        *,
        event_id: str | None = None,
        retry_num: int | None = None,
        retry_reason: str | None = None,
        team_id: str | None = None,
        api_app_id: str | None = None,
        timestamp: int | str | None = None,
        bad_signature: bool = False,
    ) -> tuple[int, str]:
        """Deliver `event` inside an `event_callback` envelope."""
        team = team_id or self.team_id
        envelope = {
            "token": "verification-token",
            "team_id": team,
            "api_app_id": api_app_id or self.api_app_id,
            "event": event,
            "type": "event_callback",
            "event_id": event_id or f"Ev{uuid.uuid4().hex[:10].upper()}",
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": team,
                    "user_id": self.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": f"4-{uuid.uuid4().hex}",
        }
        headers: dict[str, str] = {}
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = retry_reason or "http_timeout"
        return await self.post_json(
            envelope, timestamp=timestamp, bad_signature=bad_signature, headers=headers
        )

    async def url_verification(self, challenge: str = "challenge-token") -> tuple[int, str]:
        """Send the Events API `url_verification` handshake."""
        payload = {
            "token": "verification-token",
            "challenge": challenge,
            "type": "url_verification",
        }
        return await self.post_json(payload)

    def app_mention(
        self,
        text: str,
        *,
        user: str = "U1",
        channel: str = "C1",
        ts: str | None = None,
        thread_ts: str | None = None,
    ) -> dict[str, Any]:
        """Build an `app_mention` event (text should usually contain `<@UBOT>`)."""
        event = self._message_like("app_mention", text, user, channel, ts, thread_ts)
        event["channel_type"] = "channel"
        return event

    def direct_message(
        self,
        text: str,
        *,
        user: str = "U1",
        channel: str = "D1",
        ts: str | None = None,
        thread_ts: str | None = None,
    ) -> dict[str, Any]:
        """Build a `message` event in a DM (`channel_type` "im")."""
        event = self._message_like("message", text, user, channel, ts, thread_ts)
        event["channel_type"] = "im"
        return event

    def link_shared(
        self,
        *urls: str,
        user: str = "U1",
        channel: str = "C1",
        message_ts: str | None = None,
        thread_ts: str | None = None,
        composer: bool = False,
    ) -> dict[str, Any]:
        """Build a `link_shared` event (as docs.slack.dev shows it): posted in a conversation,
        or (`composer`) still in the message composer, where it carries an unfurl_id."""
        ts = message_ts or self._ids.ts()
        event: dict[str, Any] = {
            "type": "link_shared",
            "channel": channel,
            "is_bot_user_member": True,
            "user": user,
            "message_ts": f"{user}-{uuid.uuid4()}" if composer else ts,
            "unfurl_id": f"{channel}.{ts}.{uuid.uuid4().hex}",
            "source": "composer" if composer else "conversations_history",
            "links": [{"domain": urlsplit(u).hostname or "", "url": u} for u in urls],
            "event_ts": ts,
        }
        if thread_ts:
            event["thread_ts"] = thread_ts
        return event

    def _message_like(
        self,
        kind: str,
        text: str,
        user: str,
        channel: str,
        ts: str | None,
        thread_ts: str | None,
    ) -> dict[str, Any]:
        ts = ts or self._ids.ts()
        event: dict[str, Any] = {
            "type": kind,
            "user": user,
            "text": text,
            "ts": ts,
            "channel": channel,
            "event_ts": ts,
            "team": self.team_id,
            "client_msg_id": str(uuid.uuid4()),
            "blocks": [],
        }
        if thread_ts:
            event["thread_ts"] = thread_ts
        return event

    # ------------------------------------------------------------------ slash commands

    async def command(
        self,
        command: str = "/delegate",
        text: str = "",
        *,
        user_id: str = "U1",
        channel_id: str = "C1",
        trigger_id: str | None = None,
        response_url: str | None = None,
        timestamp: int | str | None = None,
        bad_signature: bool = False,
    ) -> tuple[int, str]:
        """Send a form-encoded slash command."""
        fields = {
            "token": "verification-token",
            "team_id": self.team_id,
            "team_domain": "test",
            "channel_id": channel_id,
            "channel_name": "general",
            "user_id": user_id,
            "user_name": user_id.lower(),
            "command": command,
            "text": text,
            "api_app_id": self.api_app_id,
            "is_enterprise_install": "false",
            "response_url": response_url or self._response_url("commands"),
            "trigger_id": trigger_id or self._trigger_id(),
        }
        return await self.post_form(fields, timestamp=timestamp, bad_signature=bad_signature)

    # ------------------------------------------------------------------ interactivity

    async def action(
        self,
        payload: dict[str, Any],
        *,
        timestamp: int | str | None = None,
        bad_signature: bool = False,
    ) -> tuple[int, str]:
        """Send an interactivity payload (block_actions, shortcut, view_submission...)."""
        fields = {"payload": json.dumps(payload)}
        return await self.post_form(fields, timestamp=timestamp, bad_signature=bad_signature)

    def block_action(
        self,
        action_id: str,
        value: str = "",
        *,
        user_id: str = "U1",
        channel_id: str = "C1",
        message_ts: str | None = None,
        block_id: str = "actions",
        message: dict[str, Any] | None = None,
        response_url: str | None = None,
        thread_ts: str | None = None,
        action_type: str = "button",
        text: str | None = None,
    ) -> dict[str, Any]:
        """Build a `block_actions` payload for a button click on a bot message (`action_type`
        'feedback_buttons' for a press of Slack's feedback buttons: the pressed side's value and
        text, as bolt's FeedbackButtonsAction has them)."""
        message_ts = message_ts or self._ids.ts()
        msg = message or {
            "type": "message",
            "user": self.bot_user_id,
            "bot_id": "BBOT",
            "text": "",
            "ts": message_ts,
            "blocks": [],
        }
        if thread_ts:
            msg.setdefault("thread_ts", thread_ts)
        return {
            "type": "block_actions",
            "user": self._user(user_id),
            "api_app_id": self.api_app_id,
            "token": "verification-token",
            "container": {
                "type": "message",
                "message_ts": message_ts,
                "channel_id": channel_id,
                "is_ephemeral": False,
                **({"thread_ts": thread_ts} if thread_ts else {}),
            },
            "trigger_id": self._trigger_id(),
            "team": {"id": self.team_id, "domain": "test"},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": channel_id, "name": "general"},
            "message": msg,
            "state": {"values": {}},
            "response_url": response_url or self._response_url("actions"),
            "actions": [
                {
                    "action_id": action_id,
                    "block_id": block_id,
                    "text": {"type": "plain_text", "text": text or action_id, "emoji": True},
                    "value": value,
                    "type": action_type,
                    "action_ts": self._ids.ts(),
                }
            ],
        }

    def message_shortcut(
        self,
        callback_id: str,
        message_text: str,
        *,
        user_id: str = "U1",
        channel_id: str = "C1",
        message_ts: str | None = None,
        message_user: str = "U2",
        thread_ts: str | None = None,
        response_url: str | None = None,
    ) -> dict[str, Any]:
        """Build a `message_action` (message shortcut) payload."""
        message_ts = message_ts or self._ids.ts()
        message: dict[str, Any] = {
            "type": "message",
            "user": message_user,
            "text": message_text,
            "ts": message_ts,
        }
        if thread_ts:
            message["thread_ts"] = thread_ts
        return {
            "type": "message_action",
            "token": "verification-token",
            "action_ts": self._ids.ts(),
            "team": {"id": self.team_id, "domain": "test"},
            "user": self._user(user_id),
            "channel": {"id": channel_id, "name": "general"},
            "is_enterprise_install": False,
            "enterprise": None,
            "callback_id": callback_id,
            "trigger_id": self._trigger_id(),
            "response_url": response_url or self._response_url("app"),
            "message_ts": message_ts,
            "message": message,
        }

    def view_submission(
        self,
        callback_id: str,
        values: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        user_id: str = "U1",
        private_metadata: str = "",
        view_id: str | None = None,
    ) -> dict[str, Any]:
        """Build a `view_submission`; plain-string leaves of `values` become text inputs."""
        state = {
            block_id: {
                action_id: (
                    {"type": "plain_text_input", "value": leaf} if isinstance(leaf, str) else leaf
                )
                for action_id, leaf in actions.items()
            }
            for block_id, actions in (values or {}).items()
        }
        return {
            "type": "view_submission",
            "team": {"id": self.team_id, "domain": "test"},
            "user": self._user(user_id),
            "api_app_id": self.api_app_id,
            "token": "verification-token",
            "trigger_id": self._trigger_id(),
            "view": {
                "id": view_id or self._ids.make("V"),
                "team_id": self.team_id,
                "type": "modal",
                "callback_id": callback_id,
                "private_metadata": private_metadata,
                "state": {"values": state},
                "hash": f"{time.time():.6f}.abcd",
                "title": {"type": "plain_text", "text": "Delegate"},
                "blocks": [],
                "app_id": self.api_app_id,
                "bot_id": "BBOT",
            },
            "response_urls": [],
            "is_enterprise_install": False,
            "enterprise": None,
        }

    def _user(self, user_id: str) -> dict[str, Any]:
        return {
            "id": user_id,
            "username": user_id.lower(),
            "name": user_id.lower(),
            "team_id": self.team_id,
        }

    def _response_url(self, kind: str) -> str:
        if self.slack is not None:
            return self.slack.response_url()
        return f"https://hooks.slack.com/{kind}/{self.team_id}/1/x"

    def _trigger_id(self) -> str:
        return f"{int(time.time())}.{next(self._ids.serial)}.{uuid.uuid4().hex[:16]}"
