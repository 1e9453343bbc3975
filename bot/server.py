"""The HTTP surface: Slack's Events API and interactivity endpoint, and a health check."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp

from bot.http_guard import check_request
from workers import telemetry
from workers.models import utcnow
from workers.store import Store, Undelivered
from workers.store.outbox import SLACK

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"


HealthCheck = Callable[[], Awaitable[tuple[bool, str]]]
"""One part of the process that /healthz reports: (healthy, what to say)."""


def build_web_app(
    *,
    store: Store,
    bolt: AsyncApp | None,
    signing_secret: str | None = None,
    checks: Mapping[str, HealthCheck] | None = None,
) -> web.Application:
    """`bolt` is None in Socket Mode, where Slack does not call us over HTTP. `checks` adds the
    process's own parts to /healthz (the Socket Mode connection, the worker loop)."""
    app = web.Application(client_max_size=1024 * 1024)

    async def health(_request: web.Request) -> web.Response:
        parts: dict[str, Any] = {}
        healthy = True
        for name, check in (checks or {}).items():
            try:
                ok, parts[name] = await check()
            except Exception as exc:
                ok, parts[name] = False, f"check failed ({type(exc).__name__})"
            healthy = healthy and ok
        try:
            await store.ping()
            slack_problem = await store.outbox.problem(SLACK)
            outbox = outbox_health(await store.outbox.undelivered())
        except Exception as exc:  # any failure means "not healthy"; say which
            log.warning("health check failed: database unreachable (%s)", type(exc).__name__)
            body = {"status": "unhealthy", "database": "unreachable", **parts}
            return web.json_response(body, status=503)
        # With a refused bot token nothing can be delivered and no new work is claimed.
        healthy = healthy and slack_problem is None
        body = {
            "status": "ok" if healthy else "unhealthy",
            "database": "ok",
            "slack": slack_problem or "ok",
            **parts,
            "outbox": outbox,
        }
        return web.json_response(body, status=200 if healthy else 503)

    app.router.add_get(HEALTH_PATH, health)

    async def metrics(_request: web.Request) -> web.Response:
        try:
            telemetry.refresh(await store.reporting.gauges())
        except Exception as exc:  # still serve what this process counted itself
            log.warning("metrics: database figures unavailable (%s)", type(exc).__name__)
        return web.Response(
            body=telemetry.exposition(), headers={"Content-Type": telemetry.CONTENT_TYPE}
        )

    app.router.add_get(METRICS_PATH, metrics)

    if bolt is not None:
        if not signing_secret:
            raise ValueError("serving Slack over HTTP needs the signing secret")
        secret = signing_secret

        async def slack_events(request: web.Request) -> web.Response:
            refusal = check_request(
                body=await request.read(),
                content_type=request.headers.get("Content-Type", ""),
                timestamp=request.headers.get("X-Slack-Request-Timestamp"),
                signature=request.headers.get("X-Slack-Signature"),
                signing_secret=secret,
            )
            if refusal is not None:
                log.info("refused a Slack request: %s", refusal.reason)
                return web.Response(status=refusal.status, text=refusal.reason)
            try:
                bolt_request = await to_bolt_request(request)
            except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
                # Bolt reads team, user and channel ids while parsing; odd types make it raise.
                log.info("refused a Slack request: Bolt cannot read it (%r)", exc)
                return web.Response(status=400, text="the request has fields of unexpected types")
            return await to_aiohttp_response(await bolt.async_dispatch(bolt_request))

        app.router.add_post(EVENTS_PATH, slack_events)
    return app


def outbox_health(undelivered: list[Undelivered]) -> dict[str, object]:
    """What the thread is still owed: counts, the oldest age, and what cannot be delivered."""
    pending = [u for u in undelivered if not u.permanent]
    oldest = min((u.created_at for u in pending), default=None)
    return {
        "undelivered": len(pending),
        "oldest_undelivered_s": round((utcnow() - oldest).total_seconds(), 1) if oldest else 0,
        "failed": [
            {"order": u.order_id, "key": u.key, "error": u.error}
            for u in undelivered
            if u.permanent
        ],
    }


async def start_site(app: web.Application, *, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
