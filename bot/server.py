"""The HTTP surface: Slack's Events API and interactivity endpoint, and a health check."""

from __future__ import annotations

import logging

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


def build_web_app(
    *, store: Store, bolt: AsyncApp | None, signing_secret: str | None = None
) -> web.Application:
    """`bolt` is None in Socket Mode, where Slack does not call us over HTTP."""
    app = web.Application(client_max_size=1024 * 1024)

    async def health(_request: web.Request) -> web.Response:
        try:
            await store.ping()
            slack_problem = await store.problem(SLACK)
            outbox = outbox_health(await store.undelivered())
        except Exception as exc:  # any failure means "not healthy"; say which
            log.warning("health check failed: database unreachable (%s)", type(exc).__name__)
            return web.json_response({"status": "unhealthy", "database": "unreachable"}, status=503)
        if slack_problem is not None:
            # Nothing can be delivered and no new work is claimed until the token is fixed.
            body = {"status": "unhealthy", "database": "ok", "slack": slack_problem}
            return web.json_response({**body, "outbox": outbox}, status=503)
        return web.json_response(
            {"status": "ok", "database": "ok", "slack": "ok", "outbox": outbox}
        )

    app.router.add_get(HEALTH_PATH, health)

    async def metrics(_request: web.Request) -> web.Response:
        try:
            await telemetry.refresh_from_database(store.engine)
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
