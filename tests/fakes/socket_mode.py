"""A fake Socket Mode endpoint: `apps.connections.open` on the fake Slack hands out a WebSocket URL
served here, which sends envelopes to the app and records its acknowledgements."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes import FakeServer
from tests.fakes.slack import FakeSlack
from tests.support.waiting import DEADLINE_S

APP_TOKEN = "xapp-1-test"


class FakeSocketMode(FakeServer):
    """Slack's side of Socket Mode. Set `answer_pings = False` to make the connection go quiet."""

    def __init__(self, slack: FakeSlack, *, app_token: str = APP_TOKEN) -> None:
        super().__init__()
        self.slack = slack
        self.app_token = app_token
        self.connections = 0
        self.acks: list[dict[str, Any]] = []
        self.answer_pings = True
        self._current: web.WebSocketResponse | None = None
        self._changed = asyncio.Event()
        self.app.router.add_get("/link", self._link)
        slack.tokens.add(app_token)
        slack.handlers["apps.connections.open"] = self._open

    def _open(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {"url": f"ws://127.0.0.1:{self.port}/link?ticket={uuid.uuid4().hex}"}

    async def _link(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        self.connections += 1
        self._current = ws
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": 1,
                "connection_info": {"app_id": "A1"},
                "debug_info": {"host": "fake", "approximate_connection_time": 3600},
            }
        )
        self._notify()
        async for message in ws:
            if message.type == WSMsgType.PING and self.answer_pings:
                await ws.pong(message.data)
            elif message.type == WSMsgType.TEXT:
                self.acks.append(json.loads(message.data))
                self._notify()
        return ws

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, predicate: Any, *, within: float = DEADLINE_S) -> None:
        async with asyncio.timeout(within):
            while not predicate():
                await self._changed.wait()

    async def send_event(
        self,
        event: dict[str, Any],
        *,
        event_id: str,
        retry_attempt: int = 0,
        retry_reason: str = "",
    ) -> str:
        """Push an Events API envelope; returns its envelope id."""
        assert self._current is not None, "the app has not connected"
        envelope_id = str(uuid.uuid4())
        payload = {
            "type": "event_callback",
            "team_id": "T1",
            "api_app_id": "A1",
            "event": event,
            "event_id": event_id,
            "event_time": int(time.time()),
            "authorizations": [{"team_id": "T1", "user_id": "UBOT", "is_bot": True}],
        }
        await self._current.send_json(
            {
                "envelope_id": envelope_id,
                "type": "events_api",
                "payload": payload,
                "accepts_response_payload": False,
                "retry_attempt": retry_attempt,
                "retry_reason": retry_reason,
            }
        )
        return envelope_id

    async def send_raw(self, frame: str | bytes) -> None:
        """Push any frame, well formed or not (text, or binary for bytes)."""
        assert self._current is not None, "the app has not connected"
        if isinstance(frame, bytes):
            await self._current.send_bytes(frame)
        else:
            await self._current.send_str(frame)

    def acked(self, envelope_id: str) -> bool:
        return any(a.get("envelope_id") == envelope_id for a in self.acks)
