"""Wire-level test doubles: real aiohttp servers that the real SDK clients talk to."""

from __future__ import annotations

import asyncio
import json
import re
from types import TracebackType
from typing import Self

from aiohttp import web

__all__ = ["SSE", "FakeServer", "StreamCut", "chunk_json", "chunk_text", "estimate_tokens"]


class FakeServer:
    """Base class that serves an aiohttp application on loopback (127.0.0.1 unless told
    otherwise) at a random free port."""

    def __init__(self, *, host: str = "127.0.0.1") -> None:
        self.app = web.Application()
        self._runner: web.AppRunner | None = None
        self.host = host
        self.port: int = 0
        self.problems: list[str] = []
        """Calls the real service would have rejected, or that no test scripted: each one is a
        bug in the code under test (or in the test), reported by `check` when the fake closes."""

    @property
    def url(self) -> str:
        """Root URL of the running server, without a trailing slash."""
        if self._runner is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://{self.host}:{self.port}"

    async def start(self) -> Self:
        """Bind to a free port and start serving."""
        runner = web.AppRunner(
            self.app, handle_signals=False, shutdown_timeout=0.5, access_log=None
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, 0)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self

    async def close(self) -> None:
        """Stop serving and release the port."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def problem(self, text: str) -> None:
        """Record a call the test must not pass silently (see `problems`)."""
        self.problems.append(text)

    def check(self) -> None:
        """Fail loudly when the code under test made a call the real service would reject or
        that the test did not script. Tests that provoke one on purpose clear `problems`."""
        if self.problems:
            listed = "\n  - ".join(self.problems)
            raise AssertionError(
                f"{type(self).__name__} saw calls it should not have:\n  - {listed}"
            )

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
        if exc_type is None:
            self.check()


def estimate_tokens(value: object) -> int:
    """Rough token count (about four characters per token) of a string or JSON-able value."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return max(1, len(text) // 4)


def chunk_text(text: str, words: int = 3) -> list[str]:
    """Split text into streaming deltas of a few words each (whitespace preserved)."""
    tokens = re.findall(r"\s*\S+\s*", text) or [text]
    return ["".join(tokens[i : i + words]) for i in range(0, len(tokens), words)]


def chunk_json(text: str, size: int = 16) -> list[str]:
    """Split a JSON string into fixed-size partial fragments."""
    return [text[i : i + size] for i in range(0, len(text), size)]


class StreamCut(Exception):
    """Raised by `SSE.send` when a scripted stream must be cut off."""


class SSE:
    """Writes server-sent events to an aiohttp response, optionally cutting the stream short."""

    def __init__(
        self,
        request: web.Request,
        *,
        headers: dict[str, str] | None = None,
        cut_after: int | None = None,
        delay: float = 0.0,
    ) -> None:
        self.request = request
        self.response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                **(headers or {}),
            }
        )
        self.sent = 0
        self._cut_after = cut_after
        self._delay = delay

    async def prepare(self) -> None:
        """Send the status line and headers."""
        await self.response.prepare(self.request)

    async def send(self, data: object, event: str | None = None) -> None:
        """Send one event (`data` is JSON-encoded unless it is already a string)."""
        if self._cut_after is not None and self.sent >= self._cut_after:
            raise StreamCut
        if self._delay:
            await asyncio.sleep(self._delay)
        payload = data if isinstance(data, str) else json.dumps(data)
        prefix = f"event: {event}\n" if event else ""
        await self.response.write(f"{prefix}data: {payload}\n\n".encode())
        self.sent += 1

    async def finish(self) -> web.StreamResponse:
        """End the stream cleanly."""
        await self.response.write_eof()
        return self.response

    def abort(self) -> web.StreamResponse:
        """Drop the TCP connection mid-body, as a network failure would."""
        if self.request.transport is not None:
            self.request.transport.abort()
        return self.response
